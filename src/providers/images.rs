//! Images as OpenAI-style data URLs: read from the store, shrunk to `max_side`, encoded
//! once per image however many calls send it.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use base64::Engine;

type Cache = HashMap<(String, Option<u32>), Arc<str>>;

pub struct ImageUrls {
    blob_path: Box<dyn Fn(&str) -> PathBuf + Send + Sync>,
    cache: Mutex<Cache>,
}

impl ImageUrls {
    pub fn new(blob_path: impl Fn(&str) -> PathBuf + Send + Sync + 'static) -> ImageUrls {
        ImageUrls { blob_path: Box::new(blob_path), cache: Mutex::new(HashMap::new()) }
    }

    /// `data:image/…;base64,…` for a stored image, no larger than `max_side` pixels.
    pub fn data_url(&self, digest: &str, max_side: Option<u32>) -> Result<Arc<str>, String> {
        let key = (digest.to_string(), max_side);
        if let Some(url) = self.cache.lock().expect("image cache lock").get(&key) {
            return Ok(url.clone());
        }
        let bytes = std::fs::read((self.blob_path)(digest)).map_err(|e| format!("image {digest}: {e}"))?;
        let (bytes, mime) = fit(bytes, max_side).map_err(|e| format!("image {digest}: {e}"))?;
        let url: Arc<str> =
            format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes)).into();
        self.cache.lock().expect("image cache lock").insert(key, url.clone());
        Ok(url)
    }
}

/// The bytes to send: as stored when small enough, else scaled down and re-encoded.
fn fit(bytes: Vec<u8>, max_side: Option<u32>) -> Result<(Vec<u8>, &'static str), image::ImageError> {
    let format = image::guess_format(&bytes)?;
    let mime = match format {
        image::ImageFormat::Png => "image/png",
        _ => "image/jpeg",
    };
    let Some(max_side) = max_side else { return Ok((bytes, mime)) };
    let img = image::load_from_memory_with_format(&bytes, format)?;
    if img.width().max(img.height()) <= max_side {
        return Ok((bytes, mime));
    }
    let small = img.resize(max_side, max_side, image::imageops::FilterType::Triangle);
    let mut out = Cursor::new(Vec::new());
    small.to_rgb8().write_to(&mut out, image::ImageFormat::Jpeg)?;
    Ok((out.into_inner(), "image/jpeg"))
}
