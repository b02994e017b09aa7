//! Immutable blobs by BLAKE3 digest, and directory manifests built from them.

use std::collections::BTreeMap;
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
        let (digest, bytes) = hash_reader(std::io::BufReader::new(file)).map_err(io_err(tmp))?;
        let dest = self.blob_path(&digest);
        if dest.is_file() {
            std::fs::remove_file(tmp).map_err(io_err(tmp))?;
        } else {
            let parent = dest.parent().expect("blob paths have a fan-out parent");
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            make_read_only(tmp);
            std::fs::rename(tmp, &dest).map_err(io_err(&dest))?;
        }
        Ok((digest, bytes))
    }

    pub fn put_bytes(&self, bytes: &[u8]) -> Result<(String, u64)> {
        let digest = blake3::hash(bytes).to_hex().to_string();
        if self.blob_path(&digest).is_file() {
            return Ok((digest, bytes.len() as u64));
        }
        let tmp = self.tmp_path("blob");
        let mut file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(bytes).map_err(io_err(&tmp))?;
        drop(file);
        self.adopt(&tmp)
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
        let json = serde_json::to_vec(&manifest)
            .map_err(|e| StoreError::Corrupt { path: dir.to_path_buf(), reason: e.to_string() })?;
        let (digest, _) = self.put_bytes(&json)?;
        Ok((digest, total))
    }

    /// Stores a manifest built elsewhere (its files already in the store).
    pub fn put_manifest(&self, manifest: &DirManifest) -> Result<(String, u64)> {
        let json = serde_json::to_vec(manifest)
            .map_err(|e| StoreError::Corrupt { path: self.root.clone(), reason: e.to_string() })?;
        let (digest, _) = self.put_bytes(&json)?;
        Ok((digest, manifest.files.values().map(|e| e.bytes).sum()))
    }

    pub fn read_dir_manifest(&self, digest: &str) -> Result<DirManifest> {
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path).map_err(|_| StoreError::MissingBlob { digest: digest.to_string() })?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt { path, reason: e.to_string() })
    }

    /// Writes a stored file to `dest` (replacing what is there), through a temp file.
    pub fn restore_file(&self, digest: &str, dest: &Path, executable: bool) -> Result<()> {
        let src = self.blob_path(digest);
        if !src.is_file() {
            return Err(StoreError::MissingBlob { digest: digest.to_string() });
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        // A name no other process uses, so concurrent restores never trip over each other.
        let n = super::TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dest.with_file_name(format!(".{name}.{}-{n}.silkie-tmp", std::process::id()));
        std::fs::copy(&src, &tmp).map_err(io_err(&tmp))?;
        set_permissions(&tmp, executable);
        std::fs::rename(&tmp, dest).map_err(io_err(dest))
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
        } else if dest.exists() {
            std::fs::remove_file(dest).map_err(io_err(dest))?;
        }
        for (rel, entry) in &manifest.files {
            self.restore_file(&entry.digest, &dest.join(rel), entry.executable)?;
        }
        Ok(())
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

/// Every regular file under `dir`, sorted, skipping silkie's own temp files.
pub fn walk_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).map_err(io_err(&d))? {
            let entry = entry.map_err(io_err(&d))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io_err(&path))?;
            if kind.is_dir() {
                pending.push(path);
            } else if !path.to_string_lossy().ends_with(".silkie-tmp") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

#[cfg(not(unix))]
fn is_executable(_: &Path) -> bool {
    false
}

#[cfg(unix)]
fn set_permissions(path: &Path, executable: bool) {
    use std::os::unix::fs::PermissionsExt;
    let mode = if executable { 0o755 } else { 0o644 };
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

#[cfg(not(unix))]
fn set_permissions(_: &Path, _: bool) {}

/// Blobs are immutable; a read-only mode keeps a stray write from corrupting one.
fn make_read_only(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mut perms = meta.permissions();
        perms.set_readonly(true);
        let _ = std::fs::set_permissions(path, perms);
    }
}
