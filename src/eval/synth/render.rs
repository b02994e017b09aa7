//! Drawing a scene as a PNG (with the scene as a `silkie-scene` text chunk) and reading the
//! scene back from such a PNG.

use super::{Scene, Shape, Size, WorldConfig};

const BACKGROUND: [u8; 3] = [238, 238, 238];
const CHUNK: &str = "silkie-scene";

/// The scene drawn at `world.image_size` pixels, as PNG bytes carrying the scene.
pub fn render_png(scene: &Scene, world: &WorldConfig) -> Vec<u8> {
    let size = world.image_size;
    let cell = size as f32 / scene.grid as f32;
    let mut pixels = vec![0u8; (size * size * 3) as usize];
    for y in 0..size {
        for x in 0..size {
            let colour = scene
                .objects
                .iter()
                .find(|o| {
                    let (row, col) = o.cell;
                    // Position within the cell, in [0, 1).
                    let u = (x as f32 + 0.5) / cell - col as f32;
                    let v = (y as f32 + 0.5) / cell - row as f32;
                    let margin = match o.size {
                        Some(Size::Small) => 0.3,
                        _ => 0.12,
                    };
                    inside(o.shape, u, v, margin)
                })
                .map_or(BACKGROUND, |o| o.colour.rgb());
            let at = ((y * size + x) * 3) as usize;
            pixels[at..at + 3].copy_from_slice(&colour);
        }
    }
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, size, size);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let json = serde_json::to_string(scene).unwrap_or_default();
        // Encoding to memory cannot fail for a well-formed image; an empty Vec says so if it did.
        let written = encoder
            .add_text_chunk(CHUNK.to_string(), json)
            .and_then(|_| encoder.write_header())
            .and_then(|mut w| w.write_image_data(&pixels));
        if written.is_err() {
            return Vec::new();
        }
    }
    bytes
}

/// Whether cell coordinates (u, v) in [0, 1) fall inside `shape` drawn with `margin`.
fn inside(shape: Shape, u: f32, v: f32, margin: f32) -> bool {
    if !(margin..1.0 - margin).contains(&u) || !(margin..1.0 - margin).contains(&v) {
        return false;
    }
    let span = 1.0 - 2.0 * margin;
    let (x, y) = ((u - margin) / span, (v - margin) / span);
    match shape {
        Shape::Square => true,
        Shape::Circle => (x - 0.5).powi(2) + (y - 0.5).powi(2) <= 0.25,
        // Apex at the top middle, base along the bottom.
        Shape::Triangle => (x - 0.5).abs() <= y / 2.0,
    }
}

/// The scene a PNG drawn by [`render_png`] carries; none for any other image.
pub fn read_scene(png_bytes: &[u8]) -> Option<Scene> {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let reader = decoder.read_info().ok()?;
    let info = reader.info();
    let text = info.uncompressed_latin1_text.iter().find(|t| t.keyword == CHUNK)?;
    serde_json::from_str(&text.text).ok()
}
