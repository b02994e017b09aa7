//! `export`: writes the table it needs to a workspace path as Parquet, JSONL or CSV.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    Kind, OutputDecl, Roles, RunContext, Stage, StageError, canonical, parse_params, table_format, workspace_files,
};
use crate::dsl::Issue;
use crate::store::{OutputKind, OutputRef};
use crate::table::{self, TableFormat};

pub const KIND: Kind = Kind { name: "export", version: 1, model_params: &[], configure };

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    path: String,
    #[serde(default)]
    format: Option<TableFormat>,
}

struct Export {
    params: Params,
    format: TableFormat,
}

fn configure(params: &Value) -> Result<Box<dyn Stage>, Issue> {
    let mut params: Params = parse_params(params)?;
    let format = table_format(&params.path, params.format)?;
    if params.path.split(['/', '\\']).any(|part| part == "..") {
        return Err(Issue::new("params.path", format!("`{}` leaves the workspace; export inside it", params.path)));
    }
    params.format = Some(format);
    Ok(Box::new(Export { params, format }))
}

impl Stage for Export {
    fn canonical_params(&self) -> Value {
        canonical(&self.params)
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        vec![OutputDecl { name: "file".into(), table: true }]
    }

    fn roles(&self) -> Roles {
        Roles::Named(&["table"])
    }

    fn key_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    fn workspace_outputs(&self) -> Vec<String> {
        vec![self.params.path.clone()]
    }

    fn run(&self, ctx: &RunContext) -> Result<BTreeMap<String, OutputRef>, StageError> {
        let mut df = ctx.read_table("table")?;
        let tmp = ctx.store.tmp_path(&format!("export.{}", self.format));
        table::write(&mut df, &tmp, self.format)?;
        let (digest, bytes) = ctx.store.adopt(&tmp)?;
        let output = OutputRef {
            digest,
            kind: OutputKind::File,
            rows: Some(df.height() as u64),
            bytes,
            format: Some(self.format.to_string()),
        };
        ctx.store.restore_file(&output.digest, &ctx.workspace_path(&self.params.path)?, false)?;
        Ok(BTreeMap::from([("file".to_string(), output)]))
    }

    fn restore(&self, ctx: &RunContext, outputs: &BTreeMap<String, OutputRef>) -> Result<(), StageError> {
        match outputs.get("file") {
            Some(output) => workspace_files::restore(ctx, &self.params.path, output),
            None => Ok(()),
        }
    }
}
