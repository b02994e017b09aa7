//! A journal of restores into the workspace. Restoring an output writes its files one by
//! one (each by temp name and rename, or all in a new folder's temp one); a process killed
//! halfway leaves a half-restored output and temp files. A marker in the store, present for the whole restore, says so
//! afterwards: `status` calls the instance stale, and the next run restores it in full and
//! removes what the killed one left.

use std::path::{Path, PathBuf};

use super::{Result, Store, io_err};

/// Held while a workspace output is being restored; dropping it clears the marker.
pub struct RestoreMark {
    marker: PathBuf,
}

impl Drop for RestoreMark {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.marker);
    }
}

impl Store {
    fn restore_marker(&self, path: &Path) -> PathBuf {
        let id = blake3::hash(path.to_string_lossy().as_bytes()).to_hex();
        self.root.join("restoring").join(&id[..32])
    }

    /// Marks the workspace output at `path` as being restored until the mark drops.
    pub fn restoring(&self, path: &Path) -> Result<RestoreMark> {
        let marker = self.restore_marker(path);
        if let Some(dir) = marker.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        std::fs::write(&marker, path.to_string_lossy().as_bytes()).map_err(io_err(&marker))?;
        Ok(RestoreMark { marker })
    }

    /// Whether a restore of `path` began and never finished (its process was killed). Runs
    /// that write one path hold its lock, so a restore in progress is never taken for one.
    pub fn restore_interrupted(&self, path: &Path) -> bool {
        self.restore_marker(path).exists()
    }
}

/// Removes the temp files a killed restore left at `path`: inside it when it is a folder,
/// beside it (`.NAME.PID-N.silkie-tmp`, a file or a new folder being filled) when it is not.
pub fn remove_restore_leftovers(path: &Path) -> Result<()> {
    let is_leftover = |p: &Path, prefix: &str| {
        p.file_name().map(|n| n.to_string_lossy()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(".silkie-tmp"))
    };
    let (dir, prefix) = match path.is_dir() {
        true => (path.to_path_buf(), String::new()),
        false => {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (path.parent().map(Path::to_path_buf).unwrap_or_default(), format!(".{name}."))
        }
    };
    let mut pending = vec![dir];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let entry_path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && prefix.is_empty() {
                pending.push(entry_path);
            } else if is_leftover(&entry_path, &prefix) {
                let removed =
                    if is_dir { std::fs::remove_dir_all(&entry_path) } else { std::fs::remove_file(&entry_path) };
                removed.map_err(io_err(&entry_path))?;
            }
        }
    }
    Ok(())
}
