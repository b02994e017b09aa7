//! File locks: the store lock (shared by runs, exclusive for gc) and one lock per stage key.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Result, Store, StoreError, io_err};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// Held while alive; the OS releases it if the process dies, so a `kill -9` leaves no stale lock.
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

impl Store {
    /// The store-wide lock: runs hold it shared, `gc` exclusive.
    pub fn lock_store(&self, mode: LockMode, timeout: Option<Duration>) -> Result<LockGuard> {
        let what = match mode {
            LockMode::Shared => "the store lock (a `silkie gc` is running)",
            LockMode::Exclusive => "the store lock (`silkie run`s are in progress; gc starts when they end)",
        };
        acquire(&self.root.join("store.lock"), mode, timeout, what)
    }

    /// The lock for computing one stage key; `what` names it in the waiting message.
    pub fn lock_key(&self, key: &str, what: &str, timeout: Option<Duration>) -> Result<LockGuard> {
        acquire(&self.lock_path(key), LockMode::Exclusive, timeout, what)
    }

    /// A lock on anything else by name (e.g. a workspace file two runs could both write).
    pub fn lock_named(&self, name: &str, what: &str, timeout: Option<Duration>) -> Result<LockGuard> {
        let id = blake3::hash(name.as_bytes()).to_hex();
        acquire(&self.root.join("locks").join(format!("n-{}.lock", &id[..32])), LockMode::Exclusive, timeout, what)
    }

    pub(crate) fn lock_path(&self, key: &str) -> PathBuf {
        self.root.join("locks").join(format!("{key}.lock"))
    }
}

fn acquire(path: &Path, mode: LockMode, timeout: Option<Duration>, what: &str) -> Result<LockGuard> {
    let mut file =
        OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path).map_err(io_err(path))?;
    let start = Instant::now();
    let mut told = false;
    loop {
        let attempt = match mode {
            LockMode::Shared => file.try_lock_shared(),
            LockMode::Exclusive => file.try_lock(),
        };
        match attempt {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => return Err(StoreError::Io { path: path.to_path_buf(), source: e }),
        }
        if let Some(limit) = timeout
            && start.elapsed() >= limit
        {
            return Err(StoreError::LockTimeout { what: what.to_string(), seconds: limit.as_secs_f64() });
        }
        if !told {
            let holder = holder(&mut file).map(|h| format!(" (held by {h})")).unwrap_or_default();
            tracing::info!("waiting for {what}{holder}");
            told = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if mode == LockMode::Exclusive {
        // Who holds it, for the message another process prints while it waits: written
        // over the last holder's at a fixed width, as truncating costs more than the lock.
        let _ = write_holder(&mut file);
    }
    Ok(LockGuard { _file: file })
}

fn write_holder(file: &mut File) -> std::io::Result<()> {
    let text = format!("{:<10}\n", std::process::id());
    #[cfg(unix)]
    return std::os::unix::fs::FileExt::write_all_at(file, text.as_bytes(), 0);
    #[cfg(not(unix))]
    return file.rewind().and_then(|_| std::io::Write::write_all(file, text.as_bytes()));
}

/// Who holds the lock, as far as the file tells: it keeps the last exclusive holder's pid,
/// which may be this very run (two of its instances want one lock) or a process long gone
/// (a shared holder writes nothing), and then says nothing.
fn holder(file: &mut File) -> Option<String> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    let pid: u32 = text.split_whitespace().next()?.parse().ok()?;
    if pid == std::process::id() {
        return Some("another instance of this run".into());
    }
    super::process_alive(pid).then(|| format!("pid {pid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder_written(text: &str) -> Option<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        std::fs::write(&path, text).unwrap();
        holder(&mut OpenOptions::new().read(true).write(true).open(&path).unwrap())
    }

    #[test]
    fn the_holder_named_is_another_live_process_never_this_one() {
        assert_eq!(
            holder_written(&format!("{}\n", std::process::id())).as_deref(),
            Some("another instance of this run")
        );
        // pid 1 runs on every Linux system; a pid past the kernel's limit never does.
        assert_eq!(holder_written("1         \n").as_deref(), Some("pid 1"));
        assert_eq!(holder_written("4294967295\n"), None);
        assert_eq!(holder_written(""), None);
    }

    #[test]
    fn the_holder_is_written_over_the_last_one_at_a_fixed_width() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        std::fs::write(&path, "123456789012345\n").unwrap();
        let mut file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        write_holder(&mut file).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.split_whitespace().next(), Some(std::process::id().to_string().as_str()), "{text:?}");
    }
}
