//! Reading the files users point silkie at, refusing what is not a regular file: a FIFO
//! blocks a read for ever, a device such as `/dev/zero` never ends, a socket or a folder
//! where a file is expected only fails later and less clearly.

use std::fs::FileType;
use std::io::{Error, ErrorKind, Read};
use std::path::Path;

/// What a path is when it is neither a regular file nor a folder, for messages.
pub fn special_kind(file_type: &FileType) -> Option<&'static str> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let kinds = [
            (file_type.is_fifo(), "a FIFO (named pipe)"),
            (file_type.is_char_device(), "a character device"),
            (file_type.is_block_device(), "a block device"),
            (file_type.is_socket(), "a socket"),
        ];
        if let Some((_, kind)) = kinds.into_iter().find(|(is, _)| *is) {
            return Some(kind);
        }
    }
    (!file_type.is_file() && !file_type.is_dir()).then_some("neither a file nor a folder")
}

/// The error for a path that is `kind` where `expected` was.
pub fn wrong_kind(kind: &str, expected: &str) -> Error {
    Error::new(ErrorKind::InvalidInput, format!("it is {kind}, not {expected}"))
}

/// The size of a regular file of at most `cap` bytes (links followed), or why it is not one.
pub fn check_regular(path: &Path, cap: u64) -> std::io::Result<u64> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        return Err(wrong_kind("a folder", "a file"));
    }
    if let Some(kind) = special_kind(&meta.file_type()) {
        return Err(wrong_kind(kind, "a regular file"));
    }
    if meta.len() > cap {
        return Err(too_big(meta.len(), cap));
    }
    Ok(meta.len())
}

/// The bytes of a regular file of at most `cap` bytes (links followed).
pub fn read_regular(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let len = check_regular(path, cap)?;
    // The size can change between the check and the read: never read more than the cap.
    let mut bytes = Vec::with_capacity(len as usize);
    std::fs::File::open(path)?.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(too_big(bytes.len() as u64, cap));
    }
    Ok(bytes)
}

fn too_big(size: u64, cap: u64) -> Error {
    Error::new(ErrorKind::InvalidData, format!("it holds {size} bytes, more than the {cap} bytes allowed here"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_devices_folders_and_big_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_regular(dir.path(), 10).unwrap_err().to_string().contains("a folder"));
        #[cfg(unix)]
        assert!(read_regular(Path::new("/dev/zero"), 10).unwrap_err().to_string().contains("a character device"));
        let file = dir.path().join("f");
        std::fs::write(&file, "0123456789x").unwrap();
        assert!(read_regular(&file, 10).unwrap_err().to_string().contains("11 bytes"));
        assert_eq!(read_regular(&file, 11).unwrap(), b"0123456789x");
    }
}
