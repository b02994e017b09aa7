//! Remembers the digest of workspace files by (size, mtime, inode), so that unchanged
//! big inputs are not re-read on every run. Like git's index, an entry whose file was
//! modified within a second of being hashed is not trusted (the racy-timestamp guard).

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::blobs::{DirEntry, DirManifest, hash_reader, is_executable, walk_files};
use super::{Result, Store, io_err};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Entry {
    size: u64,
    mtime_ns: i128,
    /// Catches tools that restore an old mtime (`cp -p`, `rsync -t`, `touch -d`).
    #[serde(default)]
    ctime_ns: i128,
    inode: u64,
    digest: String,
    hashed_at_ns: i128,
}

const RACY_NS: i128 = 1_000_000_000;

/// Bytes and files actually read to hash, for the run record.
#[derive(Debug, Default)]
pub struct HashStats {
    pub bytes: AtomicU64,
    pub files: AtomicU64,
}

#[derive(Debug)]
pub struct StatCache {
    path: PathBuf,
    entries: Mutex<HashMap<String, Entry>>,
    dirty: Mutex<bool>,
    pub stats: HashStats,
}

impl StatCache {
    pub fn load(store: &Store) -> StatCache {
        let path = store.root().join("statcache.json");
        let entries = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        StatCache { path, entries: Mutex::new(entries), dirty: Mutex::new(false), stats: HashStats::default() }
    }

    /// The digest of a file or (recursively, by relative path and content) a directory.
    pub fn digest(&self, path: &Path) -> Result<String> {
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        if let Some(kind) = crate::files::special_kind(&meta.file_type()) {
            return Err(io_err(path)(crate::files::wrong_kind(kind, "a file or folder")));
        }
        if meta.is_dir() {
            // A data set's folder may hold many files: hashed on every core, listed in order.
            use rayon::prelude::*;
            let files = walk_files(path)?;
            let digests: Vec<String> = files.par_iter().map(|file| self.digest(file)).collect::<Result<_>>()?;
            let mut listing = String::new();
            for (file, digest) in files.iter().zip(digests) {
                let rel = file.strip_prefix(path).unwrap_or(file).to_string_lossy().replace('\\', "/");
                listing.push_str(&format!("{rel}\0{digest}\n"));
            }
            return Ok(blake3::hash(listing.as_bytes()).to_hex().to_string());
        }
        // One entry per file: a clean absolute path is its own key (the metadata above follows
        // links, so a link and its target each get a valid entry); others are resolved.
        let clean =
            path.is_absolute() && path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        let key =
            if clean { path.to_path_buf() } else { std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()) };
        let key = key.to_string_lossy().into_owned();
        let (size, mtime_ns, ctime_ns, inode) = stat(&meta);
        if let Some(e) = self.entries.lock().expect("stat cache lock").get(&key)
            && e.size == size
            && e.mtime_ns == mtime_ns
            && e.ctime_ns == ctime_ns
            && e.inode == inode
            && e.hashed_at_ns - mtime_ns > RACY_NS
        {
            return Ok(e.digest.clone());
        }
        let file = std::fs::File::open(path).map_err(io_err(path))?;
        let hashed_at_ns = now_ns();
        let (digest, bytes) = hash_reader(std::io::BufReader::with_capacity(1 << 20, file)).map_err(io_err(path))?;
        self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.stats.files.fetch_add(1, Ordering::Relaxed);
        let entry = Entry { size, mtime_ns, ctime_ns, inode, digest: digest.clone(), hashed_at_ns };
        self.entries.lock().expect("stat cache lock").insert(key, entry);
        *self.dirty.lock().expect("stat cache lock") = true;
        Ok(digest)
    }

    /// The digest the store gives `dir` when it stores it ([`Store::put_dir`]), from the
    /// files' cached digests: a folder in the workspace and the same folder in the store are
    /// one thing by content, and a large one is not rehashed while its files are untouched.
    pub fn folder_digest(&self, dir: &Path) -> Result<String> {
        use rayon::prelude::*;
        let files = walk_files(dir)?;
        let entries: Vec<(String, DirEntry)> = files
            .par_iter()
            .map(|file| {
                let rel = file.strip_prefix(dir).unwrap_or(file).to_string_lossy().replace('\\', "/");
                let bytes = std::fs::metadata(file).map_err(io_err(file))?.len();
                let entry = DirEntry { digest: self.digest(file)?, bytes, executable: is_executable(file) };
                Ok((rel, entry))
            })
            .collect::<Result<_>>()?;
        Ok(DirManifest { files: entries.into_iter().collect() }.digest())
    }

    /// Saves new entries, merged with what concurrent runs saved meanwhile.
    pub fn save(&self, store: &Store) -> Result<()> {
        if !*self.dirty.lock().expect("stat cache lock") {
            return Ok(());
        }
        let mut merged: HashMap<String, Entry> =
            std::fs::read(&self.path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let ours = self.entries.lock().expect("stat cache lock");
        for (k, v) in ours.iter() {
            merged.insert(k.clone(), v.clone());
        }
        merged.retain(|k, _| Path::new(k).exists());
        let bytes = serde_json::to_vec(&merged).unwrap_or_default();
        store.write_atomic(&self.path, &bytes)
    }
}

fn now_ns() -> i128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0)
}

/// (size, mtime, ctime, inode); times in nanoseconds.
#[cfg(unix)]
fn stat(meta: &std::fs::Metadata) -> (u64, i128, i128, u64) {
    use std::os::unix::fs::MetadataExt;
    let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
    (meta.size(), ns(meta.mtime(), meta.mtime_nsec()), ns(meta.ctime(), meta.ctime_nsec()), meta.ino())
}

#[cfg(not(unix))]
fn stat(meta: &std::fs::Metadata) -> (u64, i128, i128, u64) {
    let since_epoch = |t: std::io::Result<std::time::SystemTime>| {
        t.ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos() as i128)
    };
    let mtime = since_epoch(meta.modified());
    (meta.len(), mtime, mtime, 0)
}
