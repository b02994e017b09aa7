//! Image files a data set points at: there, decodable to the last pixel, not cut short,
//! and not so large that decoding them later would exhaust memory.

use std::path::{Path, PathBuf};

/// The most pixels an image may have unless `max_image_pixels` says otherwise: 50 million,
/// about 7000 × 7000, far above what a VLM sees and far below what would fill memory.
pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;

/// Why an image cannot be used: (drop reason for the report, message).
pub type BadImage = (&'static str, String);

/// `Ok(file)` when the image is there, has at most `max_pixels` pixels, decodes whole and
/// (JPEG, PNG) is not cut short; else why not. Every pixel is decoded: a corrupt middle
/// shows only then, and is better found here, row named, than in a later stage.
pub fn check_image(file: &Path, max_pixels: u64) -> Result<PathBuf, BadImage> {
    if !file.is_file() {
        return Err(("missing_image", format!("image {} does not exist", file.display())));
    }
    let undecodable = |why: String| ("undecodable_image", format!("image {} cannot be decoded: {why}", file.display()));
    let open =
        || image::ImageReader::open(file).and_then(|r| r.with_guessed_format()).map_err(|e| undecodable(e.to_string()));
    let reader = open()?;
    let format = reader.format();
    let (width, height) = reader.into_dimensions().map_err(|e| undecodable(e.to_string()))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err((
            "oversized_image",
            format!(
                "image {} is {width} × {height} = {pixels} pixels, more than max_image_pixels ({max_pixels})",
                file.display()
            ),
        ));
    }
    open()?.decode().map_err(|e| undecodable(e.to_string()))?;
    if !ends_whole(file, format).map_err(|e| undecodable(e.to_string()))? {
        return Err(undecodable("the file is cut short (no end marker)".into()));
    }
    Ok(file.to_path_buf())
}

/// [`check_image`] of every file, on every core, in the files' order.
pub fn check_images(files: &[PathBuf], max_pixels: u64) -> Vec<Result<PathBuf, BadImage>> {
    use rayon::prelude::*;
    files.par_iter().map(|f| check_image(f, max_pixels)).collect()
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
