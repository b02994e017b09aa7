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
    /// Where a blob stored as a file of its own lies: a table's, a file output's, a manifest's
    /// (what [`Store::put_bytes`], [`Store::put_file`] and [`Store::adopt`] store). A data
    /// set's blobs ([`Store::put_blobs`]) are packed: read them with [`Store::open_blob`].
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let fan = digest.get(..2).unwrap_or("00");
        self.root.join("blobs").join(fan).join(digest)
    }

    /// Whether `digest` names a blob in the store, loose or packed; anything but a digest (a
    /// file path, say) does not, whatever files exist.
    pub fn has_blob(&self, digest: &str) -> bool {
        is_digest(digest)
            && (self.is_packed(digest)
                || self.blob_path(digest).is_file()
                || self.packed(digest).is_ok_and(|p| p.is_some()))
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

    /// Stores one blob as a file of its own (a table, a manifest: what is read by its path).
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<(String, u64)> {
        let digest = blake3::hash(bytes).to_hex().to_string();
        let dest = self.blob_path(&digest);
        if !dest.is_file() {
            let tmp = self.tmp_path("blob");
            // Read-only from its creation (the open file still writes).
            let mut file = new_file(&tmp, 0o444).map_err(io_err(&tmp))?;
            file.write_all(bytes).and_then(|_| file.sync_all()).map_err(io_err(&tmp))?;
            let parent = dest.parent().expect("blob paths have a fan-out parent");
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            std::fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        }
        Ok((digest, bytes.len() as u64))
    }

    /// Stores a data set's blobs (images, by the thousand) at once: each is hashed on every
    /// core, and those not yet stored go into one pack (see `packs`), made durable before its
    /// index names them — a crash leaves either no blob under a digest or a whole one. They
    /// are read by [`Store::open_blob`] and [`Store::read_blob`], not by a path.
    pub fn put_blobs(&self, blobs: &[&[u8]]) -> Result<Vec<(String, u64)>> {
        use rayon::prelude::*;
        let digests: Vec<String> = blobs.par_iter().map(|b| blake3::hash(b).to_hex().to_string()).collect();
        self.read_new_indexes()?;
        // The first of each digest not yet stored; later copies of it are the same bytes.
        let mut seen = std::collections::HashSet::new();
        let missing: Vec<(&str, &[u8])> = (0..blobs.len())
            .filter(|&i| {
                seen.insert(&digests[i]) && !self.is_packed(&digests[i]) && !self.blob_path(&digests[i]).is_file()
            })
            .map(|i| (digests[i].as_str(), blobs[i]))
            .collect();
        if !missing.is_empty() {
            self.write_pack(&missing)?;
        }
        Ok(digests.into_iter().zip(blobs).map(|(d, b)| (d, b.len() as u64)).collect())
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

    /// A blob's bytes, loose or packed.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let mut reader = self.open_blob(digest)?;
        let mut bytes = Vec::with_capacity(usize::try_from(reader.len()).unwrap_or(0));
        reader.read_to_end(&mut bytes).map_err(|e| StoreError::Io { path: self.blob_path(digest), source: e })?;
        Ok(bytes)
    }

    pub fn read_dir_manifest(&self, digest: &str) -> Result<DirManifest> {
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt { path: self.blob_path(digest), reason: e.to_string() })
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
        let mut blob = self.open_blob(digest)?;
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
pub(super) fn new_file(path: &Path, mode: u32) -> std::io::Result<std::fs::File> {
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
