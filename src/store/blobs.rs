//! Immutable blobs by BLAKE3 digest, and directory manifests built from them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Result, Store, StoreError, io_err};

/// One file of a stored directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DirEntry {
    pub digest: String,
    pub bytes: u64,
    #[serde(default)]
    pub executable: bool,
}

/// A stored directory: relative path → file blob. Itself stored as a JSON blob.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct DirManifest {
    pub files: BTreeMap<String, DirEntry>,
}

impl DirManifest {
    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }

    /// The digest it is stored under.
    pub fn digest(&self) -> String {
        blake3::hash(&self.to_json()).to_hex().to_string()
    }
}

/// Whether `s` has the form of a blob digest: BLAKE3's 64 lowercase hex digits.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Hashes a reader with BLAKE3, returning the hex digest and byte count.
pub fn hash_reader(mut reader: impl Read) -> std::io::Result<(String, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finalize().to_hex().to_string(), total))
}

impl Store {
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let fan = digest.get(..2).unwrap_or("00");
        self.root.join("blobs").join(fan).join(digest)
    }

    /// Whether `digest` names a blob in the store; anything but a digest (a file path, say)
    /// does not, whatever files exist.
    pub fn has_blob(&self, digest: &str) -> bool {
        is_digest(digest) && self.blob_path(digest).is_file()
    }

    /// Moves a finished file from `tmp/` into the store under its digest.
    pub fn adopt(&self, tmp: &Path) -> Result<(String, u64)> {
        let file = std::fs::File::open(tmp).map_err(io_err(tmp))?;
        file.sync_all().map_err(io_err(tmp))?;
        make_read_only(&file);
        let (digest, bytes) = hash_reader(std::io::BufReader::new(file)).map_err(io_err(tmp))?;
        let dest = self.blob_path(&digest);
        if dest.is_file() {
            std::fs::remove_file(tmp).map_err(io_err(tmp))?;
        } else {
            let parent = dest.parent().expect("blob paths have a fan-out parent");
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            std::fs::rename(tmp, &dest).map_err(io_err(&dest))?;
        }
        Ok((digest, bytes))
    }

    pub fn put_bytes(&self, bytes: &[u8]) -> Result<(String, u64)> {
        let stored = self.put_blobs(&[bytes])?;
        Ok(stored.into_iter().next().expect("one digest per blob"))
    }

    /// Stores many blobs at once, on every core: each is hashed, and those not yet stored are
    /// written to temp files, made durable together — one filesystem sync for the batch, not an
    /// fsync per blob — and only then renamed to their digests. A crash at any point leaves
    /// either no blob under a digest or a whole one, as [`Store::adopt`] does blob by blob.
    pub fn put_blobs(&self, blobs: &[&[u8]]) -> Result<Vec<(String, u64)>> {
        use rayon::prelude::*;
        let digests: Vec<String> = blobs.par_iter().map(|b| blake3::hash(b).to_hex().to_string()).collect();
        // The first of each digest not yet stored; later copies of it are the same bytes.
        let mut seen = std::collections::HashSet::new();
        let missing: Vec<usize> =
            (0..blobs.len()).filter(|&i| seen.insert(&digests[i]) && !self.blob_path(&digests[i]).is_file()).collect();
        let temps: Vec<PathBuf> = missing
            .par_iter()
            .map(|&i| {
                let tmp = self.tmp_path("blob");
                // Read-only from its creation (the open file still writes).
                let mut file = new_file(&tmp, 0o444).map_err(io_err(&tmp))?;
                file.write_all(blobs[i]).map_err(io_err(&tmp))?;
                Ok(tmp)
            })
            .collect::<Result<_>>()?;
        self.sync_all_of(&temps)?;
        let folders: BTreeSet<PathBuf> =
            missing.iter().filter_map(|&i| self.blob_path(&digests[i]).parent().map(Path::to_path_buf)).collect();
        for folder in &folders {
            std::fs::create_dir_all(folder).map_err(io_err(folder))?;
        }
        for (&i, tmp) in missing.iter().zip(&temps) {
            let dest = self.blob_path(&digests[i]);
            std::fs::rename(tmp, &dest).map_err(io_err(&dest))?;
        }
        Ok(digests.into_iter().zip(blobs).map(|(d, b)| (d, b.len() as u64)).collect())
    }

    /// Makes the contents of `files` (all under this store's `tmp/`) durable: one file by its
    /// fsync; many on Linux by one `syncfs` of the store's filesystem (which writes back other
    /// dirty files there too, and reports a failed write-back only from Linux 5.8 on), elsewhere
    /// or where it is refused by an fsync each.
    fn sync_all_of(&self, files: &[PathBuf]) -> Result<()> {
        #[cfg(target_os = "linux")]
        if files.len() > 1 {
            use std::os::fd::AsRawFd;
            let tmp = self.root.join("tmp");
            let dir = std::fs::File::open(&tmp).map_err(io_err(&tmp))?;
            // SAFETY: syncfs only reads the descriptor, which `dir` keeps open for the call.
            if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
                return Ok(());
            }
        }
        for file in files {
            std::fs::File::open(file).and_then(|f| f.sync_all()).map_err(io_err(file))?;
        }
        Ok(())
    }

    /// Copies a workspace file into the store — unless its bytes are there already: it is
    /// hashed first, so a file stored before (the same image under many names, an output
    /// that did not change) costs one read, not a copy and an fsync. What is copied is hashed
    /// again, so the digest always names the bytes stored even if `src` changes meanwhile.
    pub fn put_file(&self, src: &Path) -> Result<(String, u64)> {
        let file = std::fs::File::open(src).map_err(io_err(src))?;
        let (digest, bytes) = hash_reader(std::io::BufReader::new(file)).map_err(io_err(src))?;
        if self.blob_path(&digest).is_file() {
            return Ok((digest, bytes));
        }
        let tmp = self.tmp_path("blob");
        std::fs::copy(src, &tmp).map_err(io_err(src))?;
        self.adopt(&tmp)
    }

    /// Stores every file under `dir`; returns the manifest blob's digest and the total size.
    pub fn put_dir(&self, dir: &Path) -> Result<(String, u64)> {
        let mut manifest = DirManifest::default();
        let mut total = 0;
        for path in walk_files(dir)? {
            let rel = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().replace('\\', "/");
            let (digest, bytes) = self.put_file(&path)?;
            total += bytes;
            manifest.files.insert(rel, DirEntry { digest, bytes, executable: is_executable(&path) });
        }
        let (digest, _) = self.put_bytes(&manifest.to_json())?;
        Ok((digest, total))
    }

    /// Stores a manifest built elsewhere (its files already in the store).
    pub fn put_manifest(&self, manifest: &DirManifest) -> Result<(String, u64)> {
        let (digest, _) = self.put_bytes(&manifest.to_json())?;
        Ok((digest, manifest.files.values().map(|e| e.bytes).sum()))
    }

    /// A blob's bytes.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::MissingBlob { digest: digest.to_string() },
            _ => StoreError::Io { path, source: e },
        })
    }

    pub fn read_dir_manifest(&self, digest: &str) -> Result<DirManifest> {
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path).map_err(|_| StoreError::MissingBlob { digest: digest.to_string() })?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt { path, reason: e.to_string() })
    }

    /// Writes a stored file to `dest` (replacing what is there), through a temp file.
    pub fn restore_file(&self, digest: &str, dest: &Path, executable: bool) -> Result<()> {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        self.copy_blob_to(digest, dest, executable)
    }

    /// Copies a blob to `dest`, whose folder exists, through a temp file beside it.
    fn copy_blob_to(&self, digest: &str, dest: &Path, executable: bool) -> Result<()> {
        let tmp = temp_beside(dest);
        self.write_blob_to(digest, &tmp, executable)?;
        std::fs::rename(&tmp, dest).map_err(io_err(dest))
    }

    /// Writes a blob's bytes to a new file `dest`, whose folder exists.
    fn write_blob_to(&self, digest: &str, dest: &Path, executable: bool) -> Result<()> {
        let src = self.blob_path(digest);
        let missing = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::MissingBlob { digest: digest.to_string() },
            _ => StoreError::Io { path: src.clone(), source: e },
        };
        let mut blob = std::fs::File::open(&src).map_err(missing)?;
        if !blob.metadata().map_err(missing)?.is_file() {
            return Err(StoreError::MissingBlob { digest: digest.to_string() });
        }
        let mut out = new_file(dest, if executable { 0o755 } else { 0o644 }).map_err(io_err(dest))?;
        std::io::copy(&mut blob, &mut out).map_err(io_err(dest))?;
        Ok(())
    }

    /// Recreates a stored directory at `dest`, removing files the manifest does not list.
    pub fn restore_dir(&self, digest: &str, dest: &Path) -> Result<()> {
        let manifest = self.read_dir_manifest(digest)?;
        // A link where the folder goes is replaced, never followed: clearing through it
        // would delete files wherever it points.
        if std::fs::symlink_metadata(dest).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(dest).map_err(io_err(dest))?;
        }
        if dest.is_dir() {
            for path in walk_files(dest)? {
                let rel = path.strip_prefix(dest).unwrap_or(&path).to_string_lossy().replace('\\', "/");
                if !manifest.files.contains_key(&rel) {
                    std::fs::remove_file(&path).map_err(io_err(&path))?;
                }
            }
            return self.write_manifest_files(&manifest, dest, |digest, file, executable| {
                self.copy_blob_to(digest, file, executable)
            });
        }
        if dest.exists() {
            std::fs::remove_file(dest).map_err(io_err(dest))?;
        }
        // A new folder is filled under a temp name and renamed whole: no file needs a temp
        // of its own, and `dest` appears complete or not at all.
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let tmp = temp_beside(dest);
        self.write_manifest_files(&manifest, &tmp, |digest, file, executable| {
            self.write_blob_to(digest, file, executable)
        })?;
        std::fs::rename(&tmp, dest).map_err(io_err(dest))
    }

    /// Every file of `manifest` written under `root` by `write(digest, file, executable)`:
    /// folders made once each, then the files (a data set's many small images) on every core.
    fn write_manifest_files(
        &self,
        manifest: &DirManifest,
        root: &Path,
        write: impl Fn(&str, &Path, bool) -> Result<()> + Sync,
    ) -> Result<()> {
        use rayon::prelude::*;
        let folders: BTreeSet<PathBuf> =
            manifest.files.keys().filter_map(|rel| root.join(rel).parent().map(Path::to_path_buf)).collect();
        for folder in folders.iter().chain([root.to_path_buf()].iter()) {
            std::fs::create_dir_all(folder).map_err(io_err(folder))?;
        }
        manifest.files.par_iter().try_for_each(|(rel, entry)| write(&entry.digest, &root.join(rel), entry.executable))
    }

    /// Every blob digest a stored output refers to (a directory's manifest and its files).
    pub fn blobs_of(&self, digest: &str, is_dir: bool) -> Result<Vec<String>> {
        let mut all = vec![digest.to_string()];
        if is_dir {
            all.extend(self.read_dir_manifest(digest)?.files.into_values().map(|e| e.digest));
        }
        Ok(all)
    }
}

/// A name beside `dest` that no other process or thread uses, for a temp file or folder that
/// becomes `dest` by a rename.
fn temp_beside(dest: &Path) -> PathBuf {
    let n = super::TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.{}-{n}{TEMP_SUFFIX}", std::process::id()))
}

/// What names silkie's own temp files and folders in a workspace.
const TEMP_SUFFIX: &str = ".silkie-tmp";

/// Every regular file under `dir`, sorted, skipping silkie's own temp files and folders.
pub fn walk_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).map_err(io_err(&d))? {
            let entry = entry.map_err(io_err(&d))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io_err(&path))?;
            if path.to_string_lossy().ends_with(TEMP_SUFFIX) {
                continue;
            }
            if kind.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(unix)]
pub(super) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

#[cfg(not(unix))]
pub(super) fn is_executable(_: &Path) -> bool {
    false
}

/// A new file at `path` (emptying a leftover there) with `mode` less the umask, as `cp` makes one:
/// one system call, where creating and then setting the mode takes three — which counts when
/// a data set's images are written by the ten thousand.
fn new_file(path: &Path, mode: u32) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path)
}

/// Blobs are immutable; a read-only mode keeps a stray write from corrupting one.
fn make_read_only(file: &std::fs::File) {
    if let Ok(meta) = file.metadata() {
        let mut perms = meta.permissions();
        perms.set_readonly(true);
        let _ = file.set_permissions(perms);
    }
}
