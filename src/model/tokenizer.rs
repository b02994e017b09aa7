//! A byte-level tokenizer for the built-in model: every UTF-8 byte is a token, plus a few
//! specials. Enough for the synthetic world; real models bring their own (HF `tokenizers`).

use serde::{Deserialize, Serialize};

pub const BOS: u32 = 256;
pub const EOS: u32 = 257;
pub const PAD: u32 = 258;
/// Vocabulary size: 256 bytes and the specials.
pub const VOCAB: usize = 259;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteTokenizer;

impl ByteTokenizer {
    pub fn encode(&self, text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }

    /// Text from tokens, stopping at EOS and skipping other specials.
    pub fn decode(&self, tokens: &[u32]) -> String {
        let bytes: Vec<u8> = tokens.iter().take_while(|t| **t != EOS).filter(|t| **t < 256).map(|t| *t as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_text_and_stops_at_eos() {
        let t = ByteTokenizer;
        let mut tokens = t.encode("a red circle — two");
        assert_eq!(t.decode(&tokens), "a red circle — two");
        tokens.push(EOS);
        tokens.extend(t.encode("ignored"));
        assert_eq!(t.decode(&tokens), "a red circle — two");
    }
}
