//! What a LLaVA config alone lacks to run, stood in for: a word-level tokenizer holding the
//! config's image token at its id, a plain chat template, an image processor of the tower's
//! size. Enough to time a model of a published shape with random weights (`silkie bench dpo
//! --config`) where nothing can be downloaded; never enough to answer anything.

use std::path::Path;

use serde_json::json;

use super::config::{LlavaConfig, VisionKind};

/// Ids the stand-in tokenizer gives its own specials (below any image token id).
const UNKNOWN: u32 = 0;
const BOS: u32 = 1;
const EOS: u32 = 2;

/// Writes each companion file `dir` lacks (`tokenizer.json`, `tokenizer_config.json`,
/// `preprocessor_config.json`) as a stand-in for `config`.
pub fn write_missing(dir: &Path, config: &LlavaConfig) -> std::io::Result<()> {
    let image = config.image_token_id;
    let special = |id: i64, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(BOS.into(), "<s>"), special(EOS.into(), "</s>"), special(image, "<image>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"<unk>": UNKNOWN, "<s>": BOS, "</s>": EOS, "<image>": image},
                  "unk_token": "<unk>"},
    });
    // Each message's parts in order, the image as its token: the shape of LLaVA's templates.
    let template = concat!(
        "{% for m in messages %}{{ m['role'] }}: {% for p in m['content'] %}",
        "{% if p['type'] == 'image' %}<image> {% else %}{{ p['text'] }}{% endif %}",
        "{% endfor %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}",
    );
    let tokenizer_config =
        json!({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "chat_template": template});
    let side = config.vision.image_size;
    let processor = match config.vision.kind {
        VisionKind::Clip => json!({"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": side},
                                   "crop_size": {"height": side, "width": side}}),
        VisionKind::Siglip => {
            json!({"image_processor_type": "SiglipImageProcessor", "size": {"height": side, "width": side}})
        }
    };
    for (name, value) in [
        ("tokenizer.json", tokenizer),
        ("tokenizer_config.json", tokenizer_config),
        ("preprocessor_config.json", processor),
    ] {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, serde_json::to_vec_pretty(&value).expect("JSON values serialize"))?;
        }
    }
    Ok(())
}
