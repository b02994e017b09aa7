//! What LLaVA's processor does before the model, read from the checkpoint's own files: the
//! chat template (`chat_template.jinja`, `chat_template.json` or `tokenizer_config.json`)
//! rendered the way transformers renders it, `tokenizer.json` through the `tokenizers` crate,
//! each `<image>` expanded to one token per image feature, and the image processor
//! (`processor_config.json` / `preprocessor_config.json`: CLIP's shortest-edge resize and
//! centre crop, SigLIP's fixed resize, LLaVA's pad-to-square, rescale and normalise) as its
//! PIL backend computes it.

use std::path::Path;

use image::{DynamicImage, RgbImage};

use crate::model::policy::{Message, Part};
use serde_json::Value;

/// A file of the checkpoint that does not read, and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct ProcessorError {
    pub file: String,
    pub reason: String,
}

fn error(dir: &Path, file: &str, reason: impl std::fmt::Display) -> ProcessorError {
    ProcessorError { file: dir.join(file).display().to_string(), reason: reason.to_string() }
}

#[derive(Debug)]
pub struct Processor {
    tokenizer: tokenizers::Tokenizer,
    template: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    image_token: String,
    /// `<image>` tokens per image: one per feature row the vision tower gives.
    image_tokens: usize,
    images: ImageProcessor,
}

impl Processor {
    /// Reads the processor files of the checkpoint in `dir`; `image_tokens` is how many
    /// features the model gives per image.
    pub fn load(dir: &Path, image_tokens: usize) -> Result<Processor, ProcessorError> {
        let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| error(dir, "tokenizer.json", e))?;
        let tokenizer_config = read_json(dir, "tokenizer_config.json")?.unwrap_or(Value::Null);
        let processor_config = read_json(dir, "processor_config.json")?.unwrap_or(Value::Null);
        let template = chat_template(dir, &tokenizer_config, &processor_config)?;
        let special = |key: &str| match tokenizer_config.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(map)) => map.get("content").and_then(Value::as_str).map(String::from),
            _ => None,
        };
        let image_token = processor_config.get("image_token").and_then(Value::as_str).unwrap_or("<image>").to_string();
        if tokenizer.token_to_id(&image_token).is_none() {
            return Err(error(dir, "tokenizer.json", format!("the vocabulary has no image token `{image_token}`")));
        }
        let images = match processor_config.get("image_processor") {
            Some(section) => ImageProcessor::parse(section).map_err(|e| error(dir, "processor_config.json", e))?,
            None => {
                let section = read_json(dir, "preprocessor_config.json")?.ok_or_else(|| {
                    error(dir, "preprocessor_config.json", "no image processor (nor one in processor_config.json)")
                })?;
                ImageProcessor::parse(&section).map_err(|e| error(dir, "preprocessor_config.json", e))?
            }
        };
        Ok(Processor {
            tokenizer,
            template,
            bos_token: special("bos_token"),
            eos_token: special("eos_token"),
            pad_token: special("pad_token"),
            image_token,
            image_tokens,
            images,
        })
    }

    /// The chat template over `messages`, as `apply_chat_template(…, tokenize=False)` gives it.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, String> {
        let mut env = minijinja::Environment::new();
        // transformers' environment: trim_blocks, lstrip_blocks, loop controls.
        let syntax = minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build();
        env.set_syntax(syntax.map_err(|e| e.to_string())?);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        env.add_template("chat", &self.template).map_err(|e| format!("the chat template does not parse: {e}"))?;
        let messages: Vec<Value> = messages.iter().map(message_value).collect();
        let context = minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(&messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        };
        let template = env.get_template("chat").map_err(|e| e.to_string())?;
        template.render(context).map_err(|e| format!("the chat template failed: {e}"))
    }

    /// Token ids of `text`, each `<image>` first expanded to one token per image feature.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String> {
        let expanded = text.replace(&self.image_token, &self.image_token.repeat(self.image_tokens));
        let encoding = self.tokenizer.encode(expanded, add_special_tokens).map_err(|e| format!("tokenizing: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The id of the token rows are padded with: the tokenizer's pad token, else its
    /// end-of-sequence one, else 0 (padding sits outside every mask, so only its range matters).
    pub fn pad_id(&self) -> u32 {
        [self.pad_token.as_deref(), self.eos_token.as_deref()]
            .into_iter()
            .flatten()
            .find_map(|t| self.tokenizer.token_to_id(t))
            .unwrap_or(0)
    }

    /// Text for token ids, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.tokenizer.decode(ids, true).map_err(|e| format!("decoding: {e}"))
    }

    /// The model's input for one image: [3, height, width], channels first.
    pub fn pixels(&self, image: &DynamicImage) -> (Vec<f32>, [usize; 3]) {
        self.images.process(image)
    }

    /// The side lengths (height, width) of what [`Processor::pixels`] gives.
    pub fn pixel_size(&self) -> (usize, usize) {
        self.images.output_size()
    }
}

/// A message as chat templates read it: `{role, content: [{type: text, text} | {type: image}]}`.
fn message_value(message: &Message) -> Value {
    let content: Vec<Value> = message
        .content
        .iter()
        .map(|part| match part {
            Part::Text(text) => serde_json::json!({"type": "text", "text": text}),
            Part::Image => serde_json::json!({"type": "image"}),
        })
        .collect();
    serde_json::json!({"role": message.role.name(), "content": content})
}

fn read_json(dir: &Path, file: &str) -> Result<Option<Value>, ProcessorError> {
    match std::fs::read(dir.join(file)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| error(dir, file, format!("not JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(error(dir, file, e)),
    }
}

/// The template source, wherever the checkpoint keeps it. `{% generation %}` blocks (which
/// only mark assistant text for transformers' masks) are dropped: they render nothing.
fn chat_template(dir: &Path, tokenizer_config: &Value, processor_config: &Value) -> Result<String, ProcessorError> {
    let from_file = match std::fs::read_to_string(dir.join("chat_template.jinja")) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(error(dir, "chat_template.jinja", e)),
    };
    let from_json = || -> Result<Option<String>, ProcessorError> {
        let json = read_json(dir, "chat_template.json")?;
        Ok(json.as_ref().and_then(|v| v.get("chat_template")).and_then(Value::as_str).map(String::from))
    };
    let embedded = |config: &Value| config.get("chat_template").and_then(Value::as_str).map(String::from);
    let template = match from_file {
        Some(text) => text,
        None => from_json()?
            .or_else(|| embedded(processor_config))
            .or_else(|| embedded(tokenizer_config))
            .ok_or_else(|| error(dir, "chat_template.jinja", "the checkpoint has no chat template"))?,
    };
    Ok(without_generation_tags(&template))
}

/// Removes `{% generation %}` / `{% endgeneration %}` tags (with any `-` whitespace marks).
fn without_generation_tags(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else { break };
        let tag = &rest[start + 2..start + len];
        let word = tag.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..start]);
        if word != "generation" && word != "endgeneration" {
            out.push_str(&rest[start..start + len + 2]);
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// How images become pixels, per the processor's config.
#[derive(Debug, Clone, PartialEq)]
struct ImageProcessor {
    resize: Option<Resize>,
    /// (height, width) of the centre crop.
    crop: Option<(usize, usize)>,
    /// LLaVA's: pad to a square of the mean colour before resizing.
    pad_to_square: bool,
    rescale: Option<f32>,
    normalize: Option<([f32; 3], [f32; 3])>,
    mean: [f32; 3],
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Resize {
    ShortestEdge(usize),
    Exact { height: usize, width: usize },
}

impl ImageProcessor {
    fn parse(section: &Value) -> Result<ImageProcessor, String> {
        let kind = section.get("image_processor_type").and_then(Value::as_str).unwrap_or("CLIPImageProcessor");
        let kind = kind.trim_end_matches("Fast").trim_end_matches("Pil");
        let (clip_like, default_mean, default_std) = match kind {
            "CLIPImageProcessor" | "LlavaImageProcessor" => {
                (true, [0.481_454_66, 0.457_827_5, 0.408_210_73], [0.268_629_54, 0.261_302_6, 0.275_777_1])
            }
            "SiglipImageProcessor" => (false, [0.5; 3], [0.5; 3]),
            other => return Err(format!("image processor `{other}` is not supported (CLIP, LLaVA, SigLIP)")),
        };
        let flag = |key: &str, default: bool| section.get(key).and_then(Value::as_bool).unwrap_or(default);
        let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3], String> {
            match section.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Number(n)) => Ok([n.as_f64().unwrap_or(0.0) as f32; 3]),
                Some(Value::Array(items)) if items.len() == 3 => {
                    let v: Vec<f32> = items.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect();
                    Ok([v[0], v[1], v[2]])
                }
                Some(other) => Err(format!("`{key}` must be a number or three, not {other}")),
            }
        };
        let resample = section.get("resample").and_then(Value::as_u64).unwrap_or(3);
        if resample != 3 {
            return Err(format!("resample {resample} is not supported: silkie resizes bicubic (3) only"));
        }
        let size = section.get("size").cloned().unwrap_or(Value::Null);
        let dim = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64).map(|n| n as usize);
        let resize = if !flag("do_resize", true) {
            None
        } else if let Some(edge) = dim(&size, "shortest_edge") {
            Some(Resize::ShortestEdge(edge))
        } else if let (Some(height), Some(width)) = (dim(&size, "height"), dim(&size, "width")) {
            Some(Resize::Exact { height, width })
        } else if let Some(n) = size.as_u64() {
            let n = n as usize;
            Some(if clip_like { Resize::ShortestEdge(n) } else { Resize::Exact { height: n, width: n } })
        } else {
            return Err(format!("`size` must have `shortest_edge` or `height` and `width`, not {size}"));
        };
        let crop = if clip_like && flag("do_center_crop", true) {
            let crop = section.get("crop_size").cloned().unwrap_or(serde_json::json!({"height": 224, "width": 224}));
            match (dim(&crop, "height"), dim(&crop, "width"), crop.as_u64()) {
                (Some(h), Some(w), _) => Some((h, w)),
                (_, _, Some(n)) => Some((n as usize, n as usize)),
                _ => return Err(format!("`crop_size` must have `height` and `width`, not {crop}")),
            }
        } else {
            None
        };
        let mean = triple("image_mean", default_mean)?;
        let std = triple("image_std", default_std)?;
        let rescale = section.get("rescale_factor").and_then(Value::as_f64).unwrap_or(1.0 / 255.0) as f32;
        Ok(ImageProcessor {
            resize,
            crop,
            pad_to_square: kind == "LlavaImageProcessor" && flag("do_pad", false),
            rescale: flag("do_rescale", true).then_some(rescale),
            normalize: flag("do_normalize", true).then_some((mean, std)),
            mean,
        })
    }

    fn output_size(&self) -> (usize, usize) {
        match (self.crop, self.resize) {
            (Some(crop), _) => crop,
            (None, Some(Resize::Exact { height, width })) => (height, width),
            (None, Some(Resize::ShortestEdge(n))) => (n, n),
            (None, None) => (0, 0),
        }
    }

    fn process(&self, image: &DynamicImage) -> (Vec<f32>, [usize; 3]) {
        let mut rgb = image.to_rgb8();
        if self.pad_to_square {
            rgb = pad_to_square(&rgb, self.mean);
        }
        if let Some(resize) = self.resize {
            let (height, width) = resize.output((rgb.height() as usize, rgb.width() as usize));
            if (height, width) != (rgb.height() as usize, rgb.width() as usize) {
                rgb =
                    image::imageops::resize(&rgb, width as u32, height as u32, image::imageops::FilterType::CatmullRom);
            }
        }
        if let Some((height, width)) = self.crop {
            rgb = centre_crop(&rgb, height, width);
        }
        let (h, w) = (rgb.height() as usize, rgb.width() as usize);
        let mut out = vec![0.0f32; 3 * h * w];
        for (x, y, pixel) in rgb.enumerate_pixels() {
            for c in 0..3 {
                let mut v = f32::from(pixel.0[c]);
                if let Some(scale) = self.rescale {
                    v *= scale;
                }
                if let Some((mean, std)) = self.normalize {
                    v = (v - mean[c]) / std[c];
                }
                out[c * h * w + y as usize * w + x as usize] = v;
            }
        }
        (out, [3, h, w])
    }
}

impl Resize {
    /// (height, width) after resizing an image of (height, width), as transformers computes it.
    fn output(self, (height, width): (usize, usize)) -> (usize, usize) {
        match self {
            Resize::Exact { height, width } => (height, width),
            Resize::ShortestEdge(edge) => {
                let (short, long) = if width <= height { (width, height) } else { (height, width) };
                let new_long = (edge as f64 * long as f64 / short as f64) as usize;
                if width <= height { (new_long, edge) } else { (edge, new_long) }
            }
        }
    }
}

/// The centre `height` × `width`, offsets rounded down; an image smaller than the crop is
/// padded with black around it.
fn centre_crop(image: &RgbImage, height: usize, width: usize) -> RgbImage {
    let (h, w) = (image.height() as i64, image.width() as i64);
    let top = (h - height as i64).div_euclid(2);
    let left = (w - width as i64).div_euclid(2);
    RgbImage::from_fn(width as u32, height as u32, |x, y| {
        let (sy, sx) = (top + y as i64, left + x as i64);
        if sy >= 0 && sy < h && sx >= 0 && sx < w {
            *image.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

/// The image centred on a square of the mean colour (LLaVA's `expand2square`).
fn pad_to_square(image: &RgbImage, mean: [f32; 3]) -> RgbImage {
    let (h, w) = (image.height(), image.width());
    if h == w {
        return image.clone();
    }
    let side = h.max(w);
    let background = image::Rgb(mean.map(|m| (m * 255.0) as u8));
    let mut out = RgbImage::from_pixel(side, side, background);
    let (top, left) = if w > h { ((side - h) / 2, 0) } else { (0, (side - w) / 2) };
    image::imageops::replace(&mut out, image, i64::from(left), i64::from(top));
    out
}
