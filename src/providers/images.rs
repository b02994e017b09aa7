//! Images as OpenAI-style data URLs: read from the store, shrunk to `max_side`, encoded
//! once per image however many calls send it.

use std::collections::{HashMap, VecDeque};
use std::io::Cursor;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine;

type Key = (String, Option<u32>);
type Slot = Arc<OnceLock<Result<Arc<str>, String>>>;

/// Encoded images kept at once: the calls for one instruction come together, so a few
/// hundred cover them, and memory stays flat however many images a data set has.
const KEEP: usize = 512;

#[derive(Default)]
struct Cache {
    slots: HashMap<Key, Slot>,
    order: VecDeque<Key>,
}

/// Reads a stored image's bytes by its digest, or says why it cannot.
type ReadImage = dyn Fn(&str) -> Result<Vec<u8>, String> + Send + Sync;

pub struct ImageUrls {
    read: Box<ReadImage>,
    cache: Mutex<Cache>,
}

impl ImageUrls {
    pub fn new(read: impl Fn(&str) -> Result<Vec<u8>, String> + Send + Sync + 'static) -> ImageUrls {
        ImageUrls { read: Box::new(read), cache: Mutex::new(Cache::default()) }
    }

    /// A stored image's bytes, as stored.
    pub fn bytes(&self, digest: &str) -> Result<Vec<u8>, String> {
        (self.read)(digest).map_err(|e| format!("image {digest}: {e}"))
    }

    /// `data:image/…;base64,…` for a stored image, no larger than `max_side` pixels.
    /// Concurrent callers for one image wait for a single encoding.
    pub fn data_url(&self, digest: &str, max_side: Option<u32>) -> Result<Arc<str>, String> {
        let slot = {
            let mut cache = self.cache.lock().expect("image cache lock");
            let key = (digest.to_string(), max_side);
            match cache.slots.get(&key) {
                Some(slot) => slot.clone(),
                None => {
                    let slot = Slot::default();
                    cache.slots.insert(key.clone(), slot.clone());
                    cache.order.push_back(key);
                    while cache.order.len() > KEEP {
                        if let Some(old) = cache.order.pop_front() {
                            cache.slots.remove(&old);
                        }
                    }
                    slot
                }
            }
        };
        slot.get_or_init(|| self.encode(digest, max_side)).clone()
    }

    /// The same, off the async workers: decoding and resizing take a while.
    pub async fn data_url_async(self: &Arc<Self>, digest: &str, max_side: Option<u32>) -> Result<Arc<str>, String> {
        let (this, digest) = (self.clone(), digest.to_string());
        tokio::task::spawn_blocking(move || this.data_url(&digest, max_side))
            .await
            .map_err(|e| format!("image encoding stopped: {e}"))?
    }

    fn encode(&self, digest: &str, max_side: Option<u32>) -> Result<Arc<str>, String> {
        let bytes = self.bytes(digest)?;
        let (bytes, mime) = fit(bytes, max_side).map_err(|e| format!("image {digest}: {e}"))?;
        Ok(format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes)).into())
    }
}

/// The bytes to send: as stored when small enough, else scaled down and re-encoded.
fn fit(bytes: Vec<u8>, max_side: Option<u32>) -> Result<(Vec<u8>, &'static str), image::ImageError> {
    let format = image::guess_format(&bytes)?;
    let mime = format.to_mime_type();
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
