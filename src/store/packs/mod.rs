//! Packs: the blobs of a data set (thousands of small images) stored many to a file.
//!
//! A pack is `packs/<id>.pack`, its blobs' bytes back to back, and `packs/<id>.idx`, one line
//! `<digest> <offset> <length>` per blob. Making a file is most of what storing an 8 KB image
//! costs (the filesystem locks the folder it is made in, and a blob took two of them: its temp
//! file and its name), so a batch of a thousand images costs two files, not a thousand.
//! Both are written under `tmp/`, made durable, and renamed pack first and index last: a
//! pack's blobs exist once its index does, and a crash leaves at worst a pack without an
//! index, which `gc` removes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{GcReport, Result, Store, StoreError, entries_of, io_err};

/// Where a packed blob lies.
#[derive(Debug, Clone)]
pub(super) struct Packed {
    pack: Arc<PathBuf>,
    offset: u64,
    len: u64,
}

/// The packs whose indexes this process has read, and the blobs they hold.
#[derive(Debug, Default)]
pub(super) struct PackIndex {
    known: Mutex<Known>,
    /// The cache's marker still says the layout before packs.
    loose_layout: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct Known {
    /// Index files read, by name.
    indexes: HashSet<String>,
    blobs: HashMap<String, Packed>,
}

impl PackIndex {
    pub(super) fn layout_is_loose(&self) {
        self.loose_layout.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        // A panic while holding it leaves a map that is only ever added to: still true.
        self.known.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A stored blob opened for reading: a loose blob's file, or its span of a pack.
#[derive(Debug)]
pub struct BlobReader {
    file: std::fs::File,
    start: u64,
    len: u64,
    pos: u64,
}

impl BlobReader {
    fn new(mut file: std::fs::File, start: u64, len: u64) -> std::io::Result<BlobReader> {
        file.seek(SeekFrom::Start(start))?;
        Ok(BlobReader { file, start, len, pos: 0 })
    }

    /// The blob's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // A seek may go past the end, as a file's may; reading there gives nothing.
        let left = usize::try_from(self.len.saturating_sub(self.pos)).unwrap_or(usize::MAX);
        let room = buf.len().min(left);
        let n = self.file.read(&mut buf[..room])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for BlobReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(delta) => self.len.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
        };
        let target =
            target.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before start"))?;
        let at = self.start.checked_add(target);
        self.file.seek(SeekFrom::Start(at.ok_or_else(|| std::io::Error::other("seek past any file's end"))?))?;
        self.pos = target;
        Ok(target)
    }
}

impl Store {
    fn packs_dir(&self) -> PathBuf {
        self.root.join("packs")
    }

    /// Marks a cache of the layout before packs as holding them, before its first pack.
    fn mark_packed_layout(&self) -> Result<()> {
        if self.packs.loose_layout.swap(false, std::sync::atomic::Ordering::Relaxed) {
            self.write_atomic(&self.root.join("LAYOUT"), super::LAYOUT.as_bytes())?;
        }
        Ok(())
    }

    /// Where a packed blob lies: from the indexes read so far, else after reading those
    /// written since (by another process, say).
    pub(super) fn packed(&self, digest: &str) -> Result<Option<Packed>> {
        if let Some(found) = self.packs.known().blobs.get(digest) {
            return Ok(Some(found.clone()));
        }
        self.read_new_indexes()?;
        Ok(self.packs.known().blobs.get(digest).cloned())
    }

    /// Whether a pack read so far holds `digest` (no look for new packs: see
    /// [`Store::read_new_indexes`]).
    pub(super) fn is_packed(&self, digest: &str) -> bool {
        self.packs.known().blobs.contains_key(digest)
    }

    /// Reads the indexes of packs written since the last look.
    pub(super) fn read_new_indexes(&self) -> Result<()> {
        for (name, idx) in self.index_files()? {
            if self.packs.known().indexes.contains(&name) {
                continue;
            }
            let pack = Arc::new(idx.with_extension("pack"));
            let entries = read_index(&idx)?;
            let mut known = self.packs.known();
            for (digest, offset, len) in entries {
                known.blobs.insert(digest, Packed { pack: pack.clone(), offset, len });
            }
            known.indexes.insert(name);
        }
        Ok(())
    }

    /// `packs/*.idx`, by file name, sorted.
    fn index_files(&self) -> Result<BTreeMap<String, PathBuf>> {
        let mut found = BTreeMap::new();
        for path in entries_of(&self.packs_dir())? {
            if path.extension().is_some_and(|e| e == "idx") {
                found.insert(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), path);
            }
        }
        Ok(found)
    }

    /// A stored blob, loose or packed, open for reading. A blob of a pack already read is
    /// opened there at once: a data set's images are read by the thousand, and a look for a
    /// loose file first would fail for each.
    pub fn open_blob(&self, digest: &str) -> Result<BlobReader> {
        let missing = || StoreError::MissingBlob { digest: digest.to_string() };
        if !super::blobs::is_digest(digest) {
            return Err(missing());
        }
        let known = self.packs.known().blobs.get(digest).cloned();
        if let Some(packed) = known {
            return open_packed(&packed, missing);
        }
        let loose = self.blob_path(digest);
        match std::fs::File::open(&loose).and_then(|f| f.metadata().map(|m| (f, m))) {
            Ok((file, meta)) if meta.is_file() => return BlobReader::new(file, 0, meta.len()).map_err(io_err(&loose)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::Io { path: loose, source: e }),
        }
        match self.packed(digest)? {
            Some(packed) => open_packed(&packed, missing),
            None => Err(missing()),
        }
    }

    /// Stores `blobs` (digest, bytes) as one pack, made durable before its index names them;
    /// the index's file name.
    pub(super) fn write_pack(&self, blobs: &[(&str, &[u8])]) -> Result<String> {
        self.mark_packed_layout()?;
        let mut index = String::with_capacity(blobs.len() * 84);
        let mut offset = 0u64;
        for (digest, bytes) in blobs {
            index.push_str(&format!("{digest} {offset} {}\n", bytes.len()));
            offset += bytes.len() as u64;
        }
        let (pack_tmp, index_tmp) = (self.tmp_path("pack"), self.tmp_path("idx"));
        write_durably(&pack_tmp, blobs.iter().map(|(_, bytes)| *bytes))?;
        write_durably(&index_tmp, [index.as_bytes()])?;
        let dir = self.packs_dir();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        // Named by its index, which names every byte of it: two writers of one pack agree.
        let id = &blake3::hash(index.as_bytes()).to_hex()[..32];
        let (pack, idx) = (dir.join(format!("{id}.pack")), dir.join(format!("{id}.idx")));
        std::fs::rename(&pack_tmp, &pack).map_err(io_err(&pack))?;
        // The pack's name must be on disk before its index's: an index whose pack a crash
        // lost would name blobs that are not there.
        sync_dir(&dir)?;
        std::fs::rename(&index_tmp, &idx).map_err(io_err(&idx))?;
        let pack = Arc::new(pack);
        let mut known = self.packs.known();
        let mut offset = 0u64;
        for (digest, bytes) in blobs {
            let len = bytes.len() as u64;
            known.blobs.insert(digest.to_string(), Packed { pack: pack.clone(), offset, len });
            offset += len;
        }
        let name = format!("{id}.idx");
        known.indexes.insert(name.clone());
        Ok(name)
    }

    /// Removes the packed blobs `live` does not name: a pack with none of them goes, one with
    /// some is rewritten with those alone (as is a blob a second pack also holds), and a pack
    /// whose index never arrived goes. Only under the store lock, held exclusively.
    pub(super) fn collect_packs(&self, live: &HashSet<String>, dry_run: bool, report: &mut GcReport) -> Result<()> {
        let indexes = self.index_files()?;
        self.remove_unindexed_packs(&indexes, dry_run, report)?;
        let mut claimed: HashSet<String> = HashSet::new();
        // A rewritten pack is named by its index, so it may take the name of one not yet
        // looked at (the same blobs, written twice): that one is now what was just written.
        let mut written: HashSet<String> = HashSet::new();
        for (name, idx) in &indexes {
            if written.contains(name) {
                continue;
            }
            let pack = idx.with_extension("pack");
            if !pack.exists() {
                // Its blobs are gone (a crash lost the pack): the records naming them rerun.
                report.blobs_removed += read_index(idx).map_or(0, |entries| entries.len());
                super::gc::remove(idx, dry_run)?;
                continue;
            }
            let entries = read_index(idx)?;
            let (kept, dropped): (Vec<_>, Vec<_>) =
                entries.into_iter().partition(|(digest, ..)| live.contains(digest) && claimed.insert(digest.clone()));
            if dropped.is_empty() {
                continue;
            }
            report.blobs_removed += dropped.len();
            report.bytes_freed += dropped.iter().map(|(_, _, len)| len).sum::<u64>();
            if dry_run {
                continue;
            }
            if !kept.is_empty() {
                let bytes = read_spans(&pack, &kept)?;
                let blobs: Vec<(&str, &[u8])> =
                    kept.iter().zip(&bytes).map(|((digest, ..), b)| (digest.as_str(), b.as_slice())).collect();
                written.insert(self.write_pack(&blobs)?);
            }
            super::gc::remove(idx, false)?;
            super::gc::remove(&pack, false)?;
        }
        // What this process read before is stale now.
        *self.packs.known() = Known::default();
        Ok(())
    }

    fn remove_unindexed_packs(
        &self,
        indexes: &BTreeMap<String, PathBuf>,
        dry_run: bool,
        report: &mut GcReport,
    ) -> Result<()> {
        for path in entries_of(&self.packs_dir())? {
            let name = path.with_extension("idx").file_name().map(|n| n.to_string_lossy().into_owned());
            if path.extension().is_some_and(|e| e == "pack") && !name.is_some_and(|n| indexes.contains_key(&n)) {
                report.bytes_freed += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                super::gc::remove(&path, dry_run)?;
            }
        }
        Ok(())
    }
}

/// A packed blob's span of its pack, open for reading; `missing()` when the pack is gone.
fn open_packed(packed: &Packed, missing: impl Fn() -> StoreError) -> Result<BlobReader> {
    let file = std::fs::File::open(&*packed.pack).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => missing(),
        _ => StoreError::Io { path: packed.pack.to_path_buf(), source: e },
    })?;
    check_span(&file, &packed.pack, packed.offset, packed.len)?;
    BlobReader::new(file, packed.offset, packed.len).map_err(io_err(&packed.pack))
}

/// (digest, offset, length) per line of a pack's index.
fn read_index(idx: &Path) -> Result<Vec<(String, u64, u64)>> {
    let text = std::fs::read_to_string(idx).map_err(io_err(idx))?;
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            let fields: Vec<&str> = line.split(' ').collect();
            let number = |s: &str| s.parse::<u64>().ok();
            match fields[..] {
                [digest, offset, len] if super::blobs::is_digest(digest) => {
                    number(offset).zip(number(len)).map(|(offset, len)| (digest.to_string(), offset, len))
                }
                _ => None,
            }
            .ok_or_else(|| StoreError::Corrupt {
                path: idx.to_path_buf(),
                reason: format!("line {}: expected `<digest> <offset> <length>`, found `{line}`", n + 1),
            })
        })
        .collect()
}

/// The bytes of each (digest, offset, length) span of `pack`.
fn read_spans(pack: &Path, spans: &[(String, u64, u64)]) -> Result<Vec<Vec<u8>>> {
    let mut file = std::fs::File::open(pack).map_err(io_err(pack))?;
    spans
        .iter()
        .map(|&(_, offset, len)| {
            check_span(&file, pack, offset, len)?;
            let mut bytes = vec![0; usize::try_from(len).unwrap_or(usize::MAX)];
            file.seek(SeekFrom::Start(offset)).and_then(|_| file.read_exact(&mut bytes)).map_err(io_err(pack))?;
            Ok(bytes)
        })
        .collect()
}

/// Fails unless `pack` holds `len` bytes from `offset`: an index is the store's own file, but a
/// damaged one must not have us read past its pack or allocate what it claims.
fn check_span(file: &std::fs::File, pack: &Path, offset: u64, len: u64) -> Result<()> {
    let size = file.metadata().map_err(io_err(pack))?.len();
    if offset.checked_add(len).is_some_and(|end| end <= size) {
        return Ok(());
    }
    Err(StoreError::Corrupt {
        path: pack.to_path_buf(),
        reason: format!("its index names bytes {offset}..{} of a {size}-byte pack", offset.saturating_add(len)),
    })
}

/// Makes the names made in `dir` durable (where the platform can open a folder to sync it).
fn sync_dir(dir: &Path) -> Result<()> {
    match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        Err(e) if cfg!(unix) => Err(StoreError::Io { path: dir.to_path_buf(), source: e }),
        _ => Ok(()),
    }
}

/// A new read-only file at `path` holding `parts` one after another, synced to disk.
fn write_durably<'a>(path: &Path, parts: impl IntoIterator<Item = &'a [u8]>) -> Result<()> {
    let mut file = super::blobs::new_file(path, 0o444).map_err(io_err(path))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut file);
    for part in parts {
        out.write_all(part).map_err(io_err(path))?;
    }
    out.flush().map_err(io_err(path))?;
    drop(out);
    file.sync_all().map_err(io_err(path))
}

#[cfg(test)]
mod tests;
