//! `command`: runs a shell command in the workspace — the escape hatch for anything not
//! built in, like a DVC stage. Its deps' bytes are in the key; its outs go into the store
//! and are restored into the workspace on a cache hit.
//!
//! Each input (every output of every needed stage) is handed to the command as an
//! environment variable `SILKIE_IN_<STAGE>_<OUTPUT>` holding a read-only path.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command as Process;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    ConfigureContext, Kind, OutputDecl, Roles, RunContext, Stage, StageError, canonical, parse_params, workspace_files,
};
use crate::dsl::{Issue, elide, shorten};
use crate::store::{OutputKind, OutputRef};
use crate::table::TableFormat;

pub const KIND: Kind = Kind { name: "command", version: 1, model_params: &[], stage_inputs: &[], configure };

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    cmd: String,
    #[serde(default)]
    deps: Vec<String>,
    #[serde(default)]
    outs: Vec<String>,
    /// Extra environment for the command; part of the key.
    #[serde(default)]
    env: BTreeMap<String, String>,
}

struct CommandStage {
    params: Params,
}

fn configure(params: &Value, _: &ConfigureContext) -> Result<Box<dyn Stage>, Issue> {
    let params: Params = parse_params(params)?;
    if params.cmd.trim().is_empty() {
        return Err(Issue::new("params.cmd", "the command is empty"));
    }
    if params.cmd.contains('\0') {
        return Err(Issue::new("params.cmd", "the command holds a NUL character, which no shell can run"));
    }
    for (name, value) in &params.env {
        let at = format!("params.env.{name}");
        if !is_env_name(name) {
            return Err(Issue::new(
                at,
                format!(
                    "{} is not an environment variable name: expected letters, digits and `_`, not starting with a digit",
                    elide(name, 60)
                ),
            ));
        }
        if name.starts_with("SILKIE_") {
            return Err(Issue::new(at, "names starting with `SILKIE_` are silkie's own (its inputs and workspace)"));
        }
        if value.contains('\0') {
            return Err(Issue::new(at, "the value holds a NUL character, which no environment can carry"));
        }
    }
    let mut claimed: Vec<(String, Vec<String>)> = Vec::new();
    for (i, dep) in params.deps.iter().enumerate() {
        claimed.push((format!("params.deps[{i}]"), components(dep)));
    }
    for (i, out) in params.outs.iter().enumerate() {
        let at = format!("params.outs[{i}]");
        let parts = components(out);
        if parts.is_empty() || PathBuf::from(out).is_absolute() || parts.iter().any(|p| p == "..") {
            return Err(Issue::new(
                at,
                format!(
                    "`{out}` must be a file or directory inside the workspace, not the workspace itself or outside it"
                ),
            ));
        }
        // An out is deleted before the command runs: it must not hold a dep or another out.
        if let Some((other, _)) = claimed.iter().find(|(_, c)| c.starts_with(&parts) || parts.starts_with(c)) {
            return Err(Issue::new(
                at,
                format!(
                    "`{out}` overlaps {other}; outs are removed before the command runs, so they cannot contain deps or each other"
                ),
            ));
        }
        claimed.push((at, parts));
    }
    Ok(Box::new(CommandStage { params }))
}

/// A name a shell can expand: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A relative path's normal components (`./a//b/` → `[a, b]`).
fn components(path: &str) -> Vec<String> {
    path.split(['/', '\\']).filter(|p| !p.is_empty() && *p != ".").map(String::from).collect()
}

/// `SILKIE_IN_` + the input's name, upper-cased, anything else than letters and digits as `_`.
fn env_name(input: &str) -> String {
    let tail: String =
        input.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("SILKIE_IN_{tail}")
}

impl CommandStage {
    /// Gives every input a path with a telling extension, pointing into the store.
    fn stage_inputs(&self, ctx: &RunContext, dir: &std::path::Path) -> Result<Vec<(String, PathBuf)>, StageError> {
        std::fs::create_dir_all(dir).map_err(StageError::io(dir))?;
        let mut env = Vec::new();
        for (name, input) in ctx.inputs {
            let file_name: String =
                name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
            let blob = ctx.store.blob_path(&input.output.digest);
            let path = match input.output.kind {
                OutputKind::Dir => {
                    let dest = dir.join(&file_name);
                    ctx.store.restore_dir(&input.output.digest, &dest)?;
                    dest
                }
                OutputKind::Table => link(&blob, &dir.join(format!("{file_name}.parquet")))?,
                OutputKind::File => {
                    let ext = input.output.format.as_deref().map(|f| format!(".{f}")).unwrap_or_default();
                    link(&blob, &dir.join(format!("{file_name}{ext}")))?
                }
            };
            env.push((env_name(name), path));
        }
        Ok(env)
    }
}

/// A `kill -9` of silkie must not leave the command running and writing into the
/// workspace while the next run starts.
#[cfg(target_os = "linux")]
fn die_with_parent(process: &mut Process) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child's own settings.
    unsafe {
        process.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_: &mut Process) {}

fn link(target: &std::path::Path, at: &std::path::Path) -> Result<PathBuf, StageError> {
    #[cfg(unix)]
    let made = std::os::unix::fs::symlink(target, at);
    #[cfg(not(unix))]
    let made = std::fs::copy(target, at).map(|_| ());
    made.map_err(StageError::io(at))?;
    Ok(at.to_path_buf())
}

impl Stage for CommandStage {
    fn canonical_params(&self) -> Value {
        canonical(&self.params)
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        self.params
            .outs
            .iter()
            .map(|out| OutputDecl { name: out.clone(), table: TableFormat::from_path(out.as_ref()).is_some() })
            .collect()
    }

    fn roles(&self) -> Roles {
        Roles::EveryNeed
    }

    fn workspace_outputs(&self) -> Vec<String> {
        self.params.outs.clone()
    }

    fn key_files(&self) -> Vec<PathBuf> {
        self.params.deps.iter().map(PathBuf::from).collect()
    }

    fn run(&self, ctx: &RunContext) -> Result<BTreeMap<String, OutputRef>, StageError> {
        for out in &self.params.outs {
            workspace_files::clear(ctx, out)?;
        }
        let staging = ctx.store.tmp_path("inputs");
        let inputs = self.stage_inputs(ctx, &staging)?;
        let mut process = Process::new("sh");
        process
            .arg("-c")
            .arg(&self.params.cmd)
            .current_dir(ctx.workspace)
            .env("SILKIE_WORKSPACE", ctx.workspace)
            .envs(inputs)
            .envs(&self.params.env);
        die_with_parent(&mut process);
        let result = process.output();
        let _ = std::fs::remove_dir_all(&staging);
        let command = shorten(&self.params.cmd, 200);
        let output = result.map_err(|e| StageError::Command {
            command: command.clone(),
            status: format!("`sh` not starting ({e})"),
            detail: String::new(),
        })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !stdout.trim().is_empty() {
            tracing::debug!("{} stdout:\n{stdout}", ctx.instance);
        }
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
            let status = output.status.code().map_or("a signal".to_string(), |c| format!("exit code {c}"));
            let detail = if tail.is_empty() { String::new() } else { format!(":\n{}", tail.join("\n")) };
            return Err(StageError::Command { command, status, detail });
        }
        let mut outputs = BTreeMap::new();
        for out in &self.params.outs {
            outputs.insert(out.clone(), workspace_files::capture(ctx, out)?);
        }
        Ok(outputs)
    }

    fn restore(&self, ctx: &RunContext, outputs: &BTreeMap<String, OutputRef>) -> Result<(), StageError> {
        for (out, output) in outputs {
            workspace_files::restore(ctx, out, output)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{env_name, is_env_name};

    #[test]
    fn env_names_are_shell_safe() {
        assert_eq!(env_name("raw.table"), "SILKIE_IN_RAW_TABLE");
        assert_eq!(env_name("clean.data/out-1.csv"), "SILKIE_IN_CLEAN_DATA_OUT_1_CSV");
    }

    #[test]
    fn env_names_a_shell_can_expand() {
        assert!(is_env_name("STAGE") && is_env_name("_x1"));
        assert!(!is_env_name("") && !is_env_name("A=B") && !is_env_name("1A") && !is_env_name("A B"));
    }
}
