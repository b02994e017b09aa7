//! The policy interface (DESIGN §6): what training, sampling and evaluation ask of a model.
//! A model receives what a chat model really receives — messages with roles, images where
//! they occur — and encodes them itself (its tokenizer, chat template and image processing):
//! rows of (chat, completion) become a [`TokenBatch`] whose summed completion log-probs it
//! gives; for one chat it generates. Nothing above this module knows which architecture
//! answers.

use std::io::Cursor;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::logps::completion_logps;
use super::tokenizer::{BOS, ByteTokenizer, EOS, PAD};

/// Who says a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One part of a message: text, or the place of an image (the images themselves travel in
/// [`Chat::images`], in the order their places appear).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Image,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Part>,
}

/// What a chat model is asked: messages, and the encoded image files (PNG, JPEG, …) their
/// image parts stand for, in order.
#[derive(Debug, Clone, Default)]
pub struct Chat<'a> {
    pub messages: Vec<Message>,
    pub images: Vec<&'a [u8]>,
}

impl<'a> Chat<'a> {
    /// A user turn of an optional image then `text`, after an optional system message: how
    /// `sample`, `annotate` and `evaluate` ask, and how training rows are shown.
    pub fn user(system: Option<&str>, image: Option<&'a [u8]>, text: &str) -> Chat<'a> {
        let mut messages = Vec::new();
        if let Some(system) = system {
            messages.push(Message { role: Role::System, content: vec![Part::Text(system.to_string())] });
        }
        let mut content: Vec<Part> = image.iter().map(|_| Part::Image).collect();
        content.push(Part::Text(text.to_string()));
        messages.push(Message { role: Role::User, content });
        Chat { messages, images: image.into_iter().collect() }
    }

    /// Every text part, one per line: what a model without a chat template reads.
    pub fn plain_text(&self) -> String {
        let texts: Vec<&str> = self
            .messages
            .iter()
            .flat_map(|m| &m.content)
            .filter_map(|p| match p {
                Part::Text(text) => Some(text.as_str()),
                Part::Image => None,
            })
            .collect();
        texts.join("\n")
    }
}

/// A row to score or learn: a chat and the assistant's completion of it.
#[derive(Debug, Clone)]
pub struct Scored<'a> {
    pub chat: Chat<'a>,
    pub completion: &'a str,
}

/// The longest token row a model makes of a batch: `max_length` when set, never more than
/// the `most` it takes.
pub fn row_limit(max_length: Option<usize>, most: usize) -> usize {
    max_length.map_or(most, |n| n.min(most))
}

/// Why rows or a chat cannot be encoded for a model.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("image {index}: {reason}")]
    Image { index: usize, reason: String },
    #[error("{0}")]
    Text(String),
    #[error("the prompt is {tokens} tokens long, and the model takes {limit}: shorten it or raise `max_length`")]
    TooLong { tokens: usize, limit: usize },
}

/// Rows of (images, prompt + completion): pixels, token ids and the completion mask.
#[derive(Clone, Debug)]
pub struct TokenBatch {
    /// The rows' images, [images, 3, height, width], as the model reads them.
    pub images: Tensor<4>,
    /// The row each image belongs to.
    pub image_rows: Vec<usize>,
    /// [rows, length]: BOS, prompt, completion, EOS, padding.
    pub tokens: Tensor<2, Int>,
    /// [rows, length]: true on completion tokens (EOS included).
    pub mask: Tensor<2, Bool>,
    /// Tokens that are not padding, counted as the rows are encoded (for throughput).
    pub text_tokens: u64,
    /// The token rows are padded with (after their end, outside the completion mask).
    pub pad: i64,
}

/// How a policy draws a completion. `temperature: 0` is greedy decoding.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { temperature: 0.0, top_p: 1.0, max_new_tokens: 64, seed: 0 }
    }
}

/// What every model behind silkie provides.
pub trait Policy {
    /// `rows` as one batch on `device`, each cut to at most `max_length` tokens (and to what
    /// the model takes).
    fn encode(
        &self,
        rows: &[Scored<'_>],
        max_length: Option<usize>,
        device: &Device,
    ) -> Result<TokenBatch, EncodeError>;
    /// Summed and per-token mean log-probs of each row's completion (prompt and padding masked).
    fn completion_logps(&self, batch: &TokenBatch) -> (Tensor<1>, Tensor<1>);
    /// A completion of `chat`.
    fn generate(&self, chat: &Chat<'_>, sampling: &Sampling) -> Result<Generation, EncodeError>;
    /// A completion of each chat, by its own sampling; a model that can computes them together
    /// (one forward pass per token for all), which may move the last bits of a logit and so,
    /// rarely, a token, as batched generation in transformers or vLLM does.
    fn generate_batch(&self, requests: &[(Chat<'_>, Sampling)]) -> Vec<Result<Generation, EncodeError>> {
        requests.iter().map(|(chat, sampling)| self.generate(chat, sampling)).collect()
    }
}

/// What [`Policy::generate`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub text: String,
    /// Prompt tokens the model read (after any cut to fit).
    pub tokens_in: usize,
    pub tokens_out: usize,
    /// Ended by the model (end of sequence) rather than by a length limit.
    pub stopped: bool,
}

/// One row for [`TokenBatch`]: BOS, prompt, completion, EOS — cut from the front when longer
/// than `max_len` (the end of a completion is what the preference is about), then padded.
pub fn encode_row(prompt: &str, completion: &str, max_len: usize) -> (Vec<i64>, Vec<bool>) {
    let t = ByteTokenizer;
    let prompt: Vec<u32> = std::iter::once(BOS).chain(t.encode(prompt)).collect();
    let completion: Vec<u32> = t.encode(completion).into_iter().chain([EOS]).collect();
    let mut tokens: Vec<i64> = prompt.iter().chain(&completion).map(|x| i64::from(*x)).collect();
    let mut mask: Vec<bool> = prompt.iter().map(|_| false).chain(completion.iter().map(|_| true)).collect();
    if tokens.len() > max_len {
        let cut = tokens.len() - max_len;
        tokens.drain(..cut);
        mask.drain(..cut);
    }
    tokens.resize(max_len, i64::from(PAD));
    mask.resize(max_len, false);
    (tokens, mask)
}

/// Encoded image bytes as [3, size, size] floats in [0, 1], channel-major.
pub fn pixels(bytes: &[u8], size: usize) -> Result<Vec<f32>, image::ImageError> {
    let s = size as u32;
    let img = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()?
        .decode()?
        .resize_exact(s, s, image::imageops::FilterType::Triangle)
        .to_rgb8();
    let plane = size * size;
    let mut out = vec![0.0; 3 * plane];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            out[c * plane + y as usize * size + x as usize] = f32::from(p[c]) / 255.0;
        }
    }
    Ok(out)
}

/// The image a row without one is shown: plain mid grey.
pub fn blank_pixels(size: usize) -> Vec<f32> {
    vec![0.5; 3 * size * size]
}

/// One encoded row: pixels and the prompt / completion texts.
pub struct Example<'a> {
    pub pixels: Vec<f32>,
    pub prompt: &'a str,
    pub completion: &'a str,
}

impl TokenBatch {
    /// Encodes `rows` for a model reading `size`-pixel images: each row cut to at most
    /// `max_len` tokens, all padded to the longest (padding costs compute and changes nothing).
    pub fn new(rows: Vec<Example<'_>>, size: usize, max_len: usize, device: &Device) -> TokenBatch {
        let n = rows.len();
        let mut pixels = Vec::with_capacity(n * 3 * size * size);
        let texts: Vec<(&str, &str)> = rows.iter().map(|r| (r.prompt, r.completion)).collect();
        for row in rows {
            pixels.extend(row.pixels);
        }
        let images = Tensor::from_data(TensorData::new(pixels, [n, 3, size, size]), device);
        let (tokens, mask, text_tokens) = token_rows(&texts, max_len, device);
        TokenBatch { images, image_rows: (0..n).collect(), tokens, mask, text_tokens, pad: i64::from(PAD) }
    }

    /// `first`'s rows, then `second`'s; the shorter side is padded to the longer one's length
    /// (padding is outside the completion, and changes nothing).
    pub fn concat(first: &TokenBatch, second: &TokenBatch) -> TokenBatch {
        let len = first.tokens.dims()[1].max(second.tokens.dims()[1]);
        let (a, b) = (first.padded_to(len), second.padded_to(len));
        let offset = first.tokens.dims()[0];
        TokenBatch {
            images: Tensor::cat(vec![first.images.clone(), second.images.clone()], 0),
            image_rows: first.image_rows.iter().copied().chain(second.image_rows.iter().map(|r| r + offset)).collect(),
            tokens: Tensor::cat(vec![a.0, b.0], 0),
            mask: Tensor::cat(vec![a.1, b.1], 0),
            text_tokens: first.text_tokens + second.text_tokens,
            pad: first.pad,
        }
    }

    /// Tokens and mask padded on the right to `len` positions.
    fn padded_to(&self, len: usize) -> (Tensor<2, Int>, Tensor<2, Bool>) {
        let [rows, n] = self.tokens.dims();
        if n >= len {
            return (self.tokens.clone(), self.mask.clone());
        }
        let device = self.tokens.device();
        let pad = Tensor::<2, Int>::full([rows, len - n], self.pad, &device);
        let outside =
            Tensor::<2, Bool>::from_data(TensorData::new(vec![false; rows * (len - n)], [rows, len - n]), &device);
        (Tensor::cat(vec![self.tokens.clone(), pad], 1), Tensor::cat(vec![self.mask.clone(), outside], 1))
    }

    /// `count` rows from `start`, with their images.
    pub fn rows(&self, start: usize, count: usize) -> TokenBatch {
        let tokens = self.tokens.clone().narrow(0, start, count);
        let text = tokens.clone().not_equal_elem(self.pad).int().sum().into_scalar::<i64>();
        let picked: Vec<usize> =
            (0..self.image_rows.len()).filter(|&i| (start..start + count).contains(&self.image_rows[i])).collect();
        // The images of a run of rows are a run of images.
        let first = picked.first().copied().unwrap_or(0);
        TokenBatch {
            images: self.images.clone().narrow(0, first, picked.len()),
            image_rows: picked.iter().map(|&i| self.image_rows[i] - start).collect(),
            tokens,
            mask: self.mask.clone().narrow(0, start, count),
            text_tokens: text as u64,
            pad: self.pad,
        }
    }
}

/// Token rows and completion masks for (prompt, completion) pairs, padded to the longest row,
/// and how many of the tokens are not padding.
fn token_rows(texts: &[(&str, &str)], max_len: usize, device: &Device) -> (Tensor<2, Int>, Tensor<2, Bool>, u64) {
    let encoded: Vec<(Vec<i64>, Vec<bool>)> = texts.iter().map(|(p, c)| encode_row(p, c, max_len)).collect();
    let unpadded =
        |(tokens, _): &(Vec<i64>, Vec<bool>)| tokens.iter().rposition(|t| *t != i64::from(PAD)).map_or(0, |i| i + 1);
    let len = encoded.iter().map(unpadded).max().unwrap_or(1).max(2);
    let text_tokens = encoded.iter().map(|row| row.0.iter().filter(|t| **t != i64::from(PAD)).count() as u64).sum();
    let n = texts.len();
    let mut tokens = Vec::with_capacity(n * len);
    let mut mask = Vec::with_capacity(n * len);
    for (t, m) in encoded {
        tokens.extend_from_slice(&t[..len]);
        mask.extend_from_slice(&m[..len]);
    }
    (
        Tensor::from_data(TensorData::new(tokens, [n, len]), device),
        Tensor::from_data(TensorData::new(mask, [n, len]), device),
        text_tokens,
    )
}

/// Summed and mean completion log-probs from a model's text logits; what [`Policy`]
/// implementations that produce logits share.
pub fn logps_from_logits(logits: Tensor<3>, batch: &TokenBatch) -> (Tensor<1>, Tensor<1>) {
    completion_logps(logits, batch.tokens.clone(), batch.mask.clone())
}

/// Picks the next token from last-position logits: argmax at temperature 0, otherwise a draw
/// from the temperature-scaled distribution cut to its top-p nucleus (HF's order: temperature,
/// then top-p, keeping at least one token).
pub fn pick_token(logits: &[f32], sampling: &Sampling, rng: &mut rand::rngs::StdRng) -> u32 {
    let argmax = || {
        let best =
            logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &l)| if l > b.1 { (i, l) } else { b });
        best.0 as u32
    };
    if sampling.temperature <= 0.0 {
        return argmax();
    }
    let scaled: Vec<f64> = logits.iter().map(|&l| f64::from(l) / sampling.temperature).collect();
    let top = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut probs: Vec<(usize, f64)> = scaled.iter().map(|l| (l - top).exp()).enumerate().collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1;
        if mass >= sampling.top_p {
            break;
        }
    }
    let nucleus = &probs[..kept];
    let mut draw = rng.random::<f64>() * mass;
    for &(token, p) in nucleus {
        if draw < p {
            return token as u32;
        }
        draw -= p;
    }
    nucleus[kept - 1].0 as u32
}

/// A seeded generator for one generation: the same seed draws the same completion.
pub fn sampler(sampling: &Sampling) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(sampling.seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_rows_keep_their_end_and_short_ones_are_padded() {
        let (tokens, mask) = encode_row("ab", "xyz", 4);
        assert_eq!(tokens, vec![120, 121, 122, i64::from(EOS)]);
        assert_eq!(mask, vec![true; 4]);
        let (tokens, mask) = encode_row("a", "b", 6);
        assert_eq!(tokens, vec![i64::from(BOS), 97, 98, i64::from(EOS), i64::from(PAD), i64::from(PAD)]);
        assert_eq!(mask, vec![false, false, true, true, false, false]);
    }

    #[test]
    fn greedy_takes_the_argmax_and_top_p_keeps_the_nucleus() {
        let mut rng = sampler(&Sampling::default());
        let logits = [0.0f32, 3.0, 1.0, 2.9];
        assert_eq!(pick_token(&logits, &Sampling::default(), &mut rng), 1);
        // With top_p tiny only the most likely token is left, whatever the temperature.
        let narrow = Sampling { temperature: 5.0, top_p: 1e-6, ..Sampling::default() };
        assert!((0..50).all(|_| pick_token(&logits, &narrow, &mut rng) == 1));
        // Sampling reaches more than one token, and a seed fixes the draws.
        let wide = Sampling { temperature: 1.0, top_p: 1.0, seed: 7, ..Sampling::default() };
        let draws = |s: &Sampling| {
            let mut rng = sampler(s);
            (0..200).map(|_| pick_token(&logits, s, &mut rng)).collect::<Vec<_>>()
        };
        let first = draws(&wide);
        assert!(first.contains(&1) && first.contains(&3));
        assert_eq!(first, draws(&wide));
    }
}
