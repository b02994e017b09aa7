//! Image files a data set points at: there, readable, and not cut short.

use std::path::{Path, PathBuf};

/// `Ok(file)` when the image is there, its header decodes and (JPEG, PNG) it is not cut
/// short; else (drop reason, message). Decoding every pixel of 80k images would cost minutes.
pub fn check_image(file: &Path) -> Result<PathBuf, (&'static str, String)> {
    if !file.is_file() {
        return Err(("missing_image", format!("image {} does not exist", file.display())));
    }
    let undecodable = |why: String| ("undecodable_image", format!("image {} cannot be decoded: {why}", file.display()));
    let reader =
        image::ImageReader::open(file).and_then(|r| r.with_guessed_format()).map_err(|e| undecodable(e.to_string()))?;
    let format = reader.format();
    reader.into_dimensions().map_err(|e| undecodable(e.to_string()))?;
    if !ends_whole(file, format).map_err(|e| undecodable(e.to_string()))? {
        return Err(undecodable("the file is cut short (no end marker)".into()));
    }
    Ok(file.to_path_buf())
}

/// Whether a JPEG ends with its end-of-image marker, or a PNG with its IEND chunk.
fn ends_whole(file: &Path, format: Option<image::ImageFormat>) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let (marker, window): (&[u8], u64) = match format {
        Some(image::ImageFormat::Jpeg) => (&[0xFF, 0xD9], 64),
        Some(image::ImageFormat::Png) => (b"IEND", 16),
        _ => return Ok(true),
    };
    let mut f = std::fs::File::open(file)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(window)))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)?;
    Ok(tail.windows(marker.len()).any(|w| w == marker))
}
