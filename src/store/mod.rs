//! The content-addressed store under the cache directory (DESIGN §4).
//!
//! Layout:
//! - `blobs/ab/<digest>`: immutable content by BLAKE3 digest;
//! - `packs/<id>.pack`, `packs/<id>.idx`: a data set's many small blobs, a batch to a file
//!   (see `packs`), under the same digests;
//! - `records/ab/<key>.json`: stage key → output manifest and key pre-image;
//! - `labels/<hash>.json`: the last key a (pipeline, instance) ran with, for `explain`;
//! - `runs/<id>.json`: one record per `silkie run`;
//! - `locks/`, `store.lock`: per-instance locks and the store lock `gc` takes;
//! - `statcache.json`: (path, size, mtime, inode) → digest;
//! - `calls.sqlite`: the call memo (see `crate::calls`);
//! - `tmp/`: files being written; renamed into place only when complete;
//! - `scratch/<key>/`: a running (or killed) stage's saved progress, cleared when it finishes;
//! - `jobs/<executor>/<key>/`: what an executor keeps of an instance it ran elsewhere (its
//!   description, script, log, a private memo copy), removed by `gc` once the key is finished
//!   and no memo copy waits to be merged.
//!
//! Every write is temp file → fsync → rename, values before the keys that point at them.

mod blobs;
mod gc;
mod lock;
mod packs;
mod records;
mod restoring;
mod statcache;
mod verify;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use blobs::{DirEntry, DirManifest, walk_files};
pub use gc::{GcOptions, GcReport, ScratchSpace};

/// The file in a scratch space naming the instance it belongs to.
pub const SCRATCH_OWNER: &str = "instance";
pub use lock::{LockGuard, LockMode};
pub use packs::BlobReader;
pub use records::{InstanceReport, InstanceStatus, Label, OutputKind, OutputRef, Placement, RunRecord, StageRecord};
pub use restoring::{RestoreMark, remove_restore_leftovers};
pub use statcache::{HashStats, StatCache};
pub use verify::Problem;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: corrupt store file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("gave up waiting for {what} after {seconds} s (--lock-timeout); another silkie process holds it")]
    LockTimeout { what: String, seconds: f64 },
    #[error("blob {digest} is missing from the store (removed by gc?); rerun the stage that made it with --force")]
    MissingBlob { digest: String },
}

impl StoreError {
    /// Why, for a person who named the path already: "no such file" for a missing one.
    pub fn reason(&self) -> String {
        match self {
            StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => "no such file".into(),
            StoreError::Io { source, .. } => source.to_string(),
            other => other.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// The paths in `dir`; none when it does not exist (a folder a store makes only once needed).
pub(crate) fn entries_of(dir: &Path) -> Result<Vec<PathBuf>> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StoreError::Io { path: dir.to_path_buf(), source: e }),
        Ok(entries) => entries.map(|entry| entry.map(|e| e.path()).map_err(io_err(dir))).collect(),
    }
}

/// Whether a process with this pid runs (on a system without `/proc`, assumed so).
pub(crate) fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists() || !Path::new("/proc/self").exists()
}

/// A handle on one cache directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// Shared by clones: what one learns of the packs, all know.
    packs: std::sync::Arc<packs::PackIndex>,
}

/// The on-disk layout this build writes: with packs (see `packs`).
const LAYOUT: &str = "silkie-store/2";
/// The layout before packs, which this build reads too and marks as [`LAYOUT`] when it first
/// writes a pack: a silkie older than packs then refuses the cache rather than finding its
/// packed images missing.
const LOOSE_LAYOUT: &str = "silkie-store/1";

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// This host, as 8 hex digits of its name's digest: what tells its temp files from another
/// node's in a shared cache.
fn host_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let mut name = [0u8; 256];
        // SAFETY: gethostname writes at most `name.len()` bytes into the buffer it is given.
        let ok = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } == 0;
        let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        let host = if ok { &name[..len] } else { b"unknown".as_slice() };
        blake3::hash(host).to_hex()[..8].to_string()
    })
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<Store> {
        for dir in ["blobs", "packs", "records", "labels", "runs", "locks", "tmp"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        let store = Store { root: root.to_path_buf(), packs: Default::default() };
        store.check_layout()?;
        Ok(store)
    }

    /// Refuses a cache written in another layout rather than misreading it.
    fn check_layout(&self) -> Result<()> {
        let marker = self.root.join("LAYOUT");
        match std::fs::read_to_string(&marker) {
            Ok(text) if text.trim() == LAYOUT => Ok(()),
            Ok(text) if text.trim() == LOOSE_LAYOUT => {
                self.packs.layout_is_loose();
                Ok(())
            }
            Ok(text) => Err(StoreError::Corrupt {
                path: marker,
                reason: format!(
                    "this cache has layout `{}`, this silkie reads `{LAYOUT}` and `{LOOSE_LAYOUT}`; use another --cache",
                    text.trim()
                ),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.write_atomic(&marker, LAYOUT.as_bytes()),
            Err(e) => Err(StoreError::Io { path: marker, source: e }),
        }
    }

    /// Where `executor` keeps what it has of the instance of `key` it runs elsewhere.
    pub fn job_dir(&self, executor: &str, key: &str) -> PathBuf {
        self.root.join("jobs").join(executor).join(key)
    }

    /// The call memo's file (see `crate::calls`).
    pub fn memo_path(&self) -> PathBuf {
        self.root.join("calls.sqlite")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `scratch/KEY/`, created if missing: in-progress state of the instance with that key
    /// (whose name is in its [`SCRATCH_OWNER`] file).
    pub fn scratch_dir(&self, key: &str) -> Result<PathBuf> {
        let path = self.root.join("scratch").join(key);
        std::fs::create_dir_all(&path).map_err(io_err(&path))?;
        Ok(path)
    }

    /// Removes `scratch/KEY/` (nothing to do when there is none).
    pub fn clear_scratch(&self, key: &str) {
        let _ = std::fs::remove_dir_all(self.root.join("scratch").join(key));
    }

    /// A fresh path under `tmp/` for a file that will be renamed into place.
    pub fn tmp_path(&self, hint: &str) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        self.root.join("tmp").join(format!("{}-h{}-{n}-{nanos}-{hint}", std::process::id(), host_tag()))
    }

    /// Removes temp files that processes no longer running left in `tmp/` (a run killed, or
    /// one that failed on a full disk): their names start with the pid that made them and the
    /// host it ran on. Only this host's are judged: a pid says nothing of another node's
    /// processes (a Slurm job writing into a shared cache).
    pub fn remove_dead_temps(&self) {
        let dir = self.root.join("tmp");
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        let here = format!("h{}", host_tag());
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mut fields = name.split('-');
            let pid = fields.next().and_then(|p| p.parse::<u32>().ok());
            // Names without a host (made before hosts were named) are this host's.
            let host = fields.next().filter(|f| f.len() == 9 && f.starts_with('h'));
            if host.is_some_and(|h| h != here) {
                continue;
            }
            if pid.is_some_and(|pid| pid != std::process::id() && !process_alive(pid)) {
                let path = entry.path();
                let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            }
        }
    }

    /// Writes `bytes` to `path` so that readers see either the old file or the whole new one.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = self.tmp_path("write");
        let mut file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::fs::rename(&tmp, path).map_err(io_err(path))
    }

    fn write_json<T: serde::Serialize>(&self, path: &Path, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(value)
            .map_err(|e| StoreError::Corrupt { path: path.to_path_buf(), reason: e.to_string() })?;
        self.write_atomic(path, &bytes)
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, path: &Path) -> Result<Option<T>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt { path: path.to_path_buf(), reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { path: path.to_path_buf(), source: e }),
        }
    }
}

/// Milliseconds since the Unix epoch, for records.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
