//! Image files a data set points at: there, decodable to the last pixel, not cut short,
//! and not so large that decoding them later would exhaust memory — and, once checked, stored.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::DataError;

/// The most pixels an image may have unless `max_image_pixels` says otherwise: 50 million,
/// about 7000 × 7000, far above what a VLM sees and far below what would fill memory.
pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;

/// Why an image cannot be used: (drop reason for the report, message).
pub type BadImage = (&'static str, String);

/// Stores blobs from their bytes (all at once, as a batch): each one's digest and size, in
/// order.
pub type PutBlobs<'s> = dyn FnMut(&[&[u8]]) -> Result<Vec<(String, u64)>, DataError> + Send + 's;

/// Per image, in order: the stored blob's (digest, size), or why the image is bad.
pub type StoredImages = Vec<Result<(String, u64), BadImage>>;

/// A batch holds at most this many bytes of image files (a single larger file is a batch of
/// its own); two batches are in memory at once...
const BATCH_BYTES: u64 = 128 << 20;
/// ...and at most this many files, so one filesystem sync covers many blobs but a crash
/// loses little work.
const BATCH_FILES: usize = 1024;

/// The bytes of `file` when it is an image that is there, has at most `max_pixels` pixels,
/// decodes whole and (JPEG, PNG) is not cut short; else why not. Every pixel is decoded: a
/// corrupt middle shows only then, and is better found here, row named, than in a later stage.
pub fn read_image(file: &Path, max_pixels: u64) -> Result<Vec<u8>, BadImage> {
    let bytes = std::fs::read(file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::IsADirectory => {
            ("missing_image", format!("image {} does not exist", file.display()))
        }
        _ => ("undecodable_image", format!("image {} cannot be decoded: {e}", file.display())),
    })?;
    check_image(bytes, &file.display().to_string(), max_pixels)
}

/// `bytes` back when they are an image as [`read_image`] requires; `name` says which in the
/// reason when not.
pub fn check_image(bytes: Vec<u8>, name: &str, max_pixels: u64) -> Result<Vec<u8>, BadImage> {
    let undecodable = |why: String| ("undecodable_image", format!("image {name} cannot be decoded: {why}"));
    let reader =
        image::ImageReader::new(Cursor::new(&bytes)).with_guessed_format().map_err(|e| undecodable(e.to_string()))?;
    let format = reader.format();
    // One decoder for the size check and the decoding: its header (a JPEG's Huffman tables
    // and all) is read once.
    let decoder = reader.into_decoder().map_err(|e| undecodable(e.to_string()))?;
    let (width, height) = image::ImageDecoder::dimensions(&decoder);
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err((
            "oversized_image",
            format!("image {name} is {width} × {height} = {pixels} pixels, more than max_image_pixels ({max_pixels})"),
        ));
    }
    image::DynamicImage::from_decoder(decoder).map_err(|e| undecodable(e.to_string()))?;
    if !ends_whole(&bytes, format) {
        return Err(undecodable("the file is cut short (no end marker)".into()));
    }
    Ok(bytes)
}

/// Every file checked as [`read_image`] says and, when good, stored through `put`: each file
/// is read once, batch by batch (memory bounded by two batches, not by the data set), and
/// checked on every core while the batch before it is stored — decoding is work for the
/// cores, storing mostly waits on the filesystem. In the files' order: the stored image's
/// (digest, size), or why it is bad.
pub fn store_images(files: &[PathBuf], max_pixels: u64, put: &mut PutBlobs) -> Result<StoredImages, DataError> {
    let mut stored = Vec::with_capacity(files.len());
    let mut store = |read: Vec<Result<Vec<u8>, BadImage>>| -> Result<(), DataError> {
        let good: Vec<&[u8]> = read.iter().filter_map(|r| r.as_deref().ok()).collect();
        let mut digests = put(&good)?.into_iter();
        stored.extend(read.into_iter().map(|r| r.map(|_| digests.next().expect("a digest per good image"))));
        Ok(())
    };
    let mut checked: Option<Vec<Result<Vec<u8>, BadImage>>> = None;
    for batch in batches(files) {
        // Storing waits on the filesystem on a thread of its own, so that every core of the
        // pool decodes meanwhile.
        let (was_stored, next) = std::thread::scope(|scope| {
            let storing = checked.take().map(|read| scope.spawn(|| store(read)));
            let next: Vec<_> = batch.par_iter().map(|f| read_image(f, max_pixels)).collect();
            let stored = storing.map_or(Ok(()), |s| {
                s.join()
                    .unwrap_or_else(|_| Err(DataError::Store { what: "images", problem: "the thread panicked".into() }))
            });
            (stored, next)
        });
        was_stored?;
        checked = Some(next);
    }
    checked.map_or(Ok(()), store)?;
    Ok(stored)
}

/// `files` cut into consecutive batches of at most [`BATCH_FILES`] files and (but for a file
/// larger on its own) [`BATCH_BYTES`] bytes.
fn batches(files: &[PathBuf]) -> Vec<&[PathBuf]> {
    let sizes: Vec<u64> = files.par_iter().map(|f| std::fs::metadata(f).map_or(0, |m| m.len())).collect();
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, size) in sizes.into_iter().enumerate() {
        if i > start && (i - start == BATCH_FILES || bytes + size > BATCH_BYTES) {
            out.push(&files[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < files.len() {
        out.push(&files[start..]);
    }
    out
}

/// Whether a JPEG ends with its end-of-image marker, or a PNG with its IEND chunk.
fn ends_whole(bytes: &[u8], format: Option<image::ImageFormat>) -> bool {
    let (marker, window): (&[u8], usize) = match format {
        Some(image::ImageFormat::Jpeg) => (&[0xFF, 0xD9], 64),
        Some(image::ImageFormat::Png) => (b"IEND", 16),
        _ => return true,
    };
    bytes[bytes.len().saturating_sub(window)..].windows(marker.len()).any(|w| w == marker)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(dir: &Path, name: &str, shade: u8) -> PathBuf {
        let path = dir.join(name);
        image::RgbImage::from_pixel(4, 3, image::Rgb([shade, 0, 0])).save(&path).unwrap();
        path
    }

    #[test]
    fn batches_keep_order_and_bound_count_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = (0..2 * BATCH_FILES + 3).map(|i| dir.path().join(format!("{i}"))).collect();
        let cut = batches(&files);
        assert_eq!(cut.iter().map(|b| b.len()).collect::<Vec<_>>(), [BATCH_FILES, BATCH_FILES, 3]);
        assert_eq!(cut.concat(), files, "missing files count as empty and keep their place");
        assert!(batches(&[]).is_empty());
    }

    #[test]
    fn good_images_are_stored_in_order_and_bad_ones_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let red = png(dir.path(), "red.png", 200);
        let cut = dir.path().join("cut.png");
        let whole = std::fs::read(&red).unwrap();
        std::fs::write(&cut, &whole[..whole.len() - 12]).unwrap();
        let files = [red.clone(), dir.path().join("gone.png"), cut, png(dir.path(), "dark.png", 9), red];
        let calls = std::sync::Mutex::new(Vec::new());
        let mut put = |blobs: &[&[u8]]| {
            calls.lock().unwrap().push(blobs.len());
            Ok(blobs.iter().map(|b| (blake3::hash(b).to_hex().to_string(), b.len() as u64)).collect())
        };
        let stored = store_images(&files, 100, &mut put).unwrap();
        assert_eq!(*calls.lock().unwrap(), [3], "one batch, the three good images");
        let reasons: Vec<&str> = stored.iter().map(|r| r.as_ref().map_or_else(|e| e.0, |_| "ok")).collect();
        assert_eq!(reasons, ["ok", "missing_image", "undecodable_image", "ok", "ok"]);
        assert_eq!(stored[0], stored[4], "the same bytes, the same digest");
        assert_eq!(stored[0].as_ref().unwrap().0, blake3::hash(&whole).to_hex().to_string());
        let tiny = store_images(&files[..1], 11, &mut put).unwrap();
        assert_eq!(tiny[0].as_ref().unwrap_err().0, "oversized_image", "4 × 3 is more than 11 pixels");
    }
}
