"""A tiny random LLaVA checkpoint, saved by transformers itself, and what transformers computes
with it: the reference silkie's `llava` architecture is tested against.

    python llava_fixture.py OUT_DIR --vision clip|siglip --text llama|qwen2 [--shards N]
                            [--dtype float32|bfloat16] [--config-shape 4|5] [--rope linear|llama3]

OUT_DIR gets the checkpoint as `save_pretrained` writes it (config, safetensors, tokenizer,
processor, chat template), the test pictures (`image.png`, 37×29, and `square.png`, already
the processor's size) and `reference.json`: for `image.png` and one chat prompt, the rendered
prompt, the processor's `input_ids` and `pixel_values`, the model's logits (float32) and 16
greedy tokens from `generate` for `square.png` (with no end-of-sequence token) and its pixel values.
Nothing is downloaded: the configs are built here and the tokenizer is a small BPE trained
here by `tokenizers`.
"""

import argparse
import json
import os

import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlavaImageProcessor,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipImageProcessor,
    SiglipVisionConfig,
)

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

# LLaVA-1.5's template, as llava-hf ships it in chat_template.json.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

CORPUS = [
    "USER: <image>\nWhat is in the picture? ASSISTANT: A red square on a blue field.",
    "USER: How many circles are there? ASSISTANT: There are three circles and one triangle.",
    "The quick brown fox jumps over the lazy dog while the cat watches from the window.",
    "Describe the image in detail. The image shows a small house beside a tall green tree.",
]


def tokenizer():
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False)
    bpe.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return fast


ROPES = {
    "linear": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0},
    # With head_dim 8 its four frequencies fall in all three of Llama 3's bands.
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
        "rope_theta": 10000.0,
    },
}


# Model sizes: `tiny` for parity tests (fast), `bench` for timing a training step.
SIZES = {
    "tiny": {"text": (32, 48, 2, 4, 2), "vision": (24, 40, 3, 4, 30, 6)},
    "bench": {"text": (256, 688, 4, 8, 4), "vision": (128, 256, 2, 4, 56, 14)},
}


def text_config(kind, vocab, tok, rope, size="tiny"):
    hidden, intermediate, layers, heads, kv_heads = SIZES[size]["text"]
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    if kind == "llama":
        return LlamaConfig(**common, rope_parameters=ROPES[rope])
    if kind == "mistral":
        # A window shorter than the prompt, so it shows.
        return MistralConfig(**common, sliding_window=16)
    return Qwen2Config(**common, tie_word_embeddings=True)


def vision_config(kind, size="tiny"):
    hidden, intermediate, layers, heads, image, patch = SIZES[size]["vision"]
    shape = dict(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image,
        patch_size=patch,
    )
    return CLIPVisionConfig(**shape) if kind == "clip" else SiglipVisionConfig(**shape)


def image_processor(kind, side=30):
    if kind == "llava-pad":
        return LlavaImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}, do_pad=True)
    if kind == "clip":
        return CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return SiglipImageProcessor(size={"height": side, "width": side})


def test_image():
    """A 37×29 picture with detail in both directions (no hard edges, as in a photo), so
    resizing and cropping show."""
    import math

    img = Image.new("RGB", (37, 29))
    img.putdata(
        [
            (
                int(127.5 + 127.5 * math.sin(x / 3.0) * math.cos(y / 4.0)),
                int(255 * x / 36),
                int(127.5 + 127.5 * math.sin((x + 2 * y) / 5.0)),
            )
            for y in range(29)
            for x in range(37)
        ]
    )
    return img


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--vision", choices=["clip", "siglip"], default="clip")
    ap.add_argument("--text", choices=["llama", "qwen2", "mistral"], default="llama")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--config-shape", type=int, choices=[4, 5], default=5)
    ap.add_argument("--rope", choices=list(ROPES), default="linear", help="the Llama's RoPE scaling")
    ap.add_argument("--pad-to-square", action="store_true", help="LLaVA's image processor, padding to a square")
    ap.add_argument(
        "--key-layout",
        choices=["saved", "nested"],
        default="saved",
        help="tensor names as save_pretrained writes them, or transformers 5's in-memory `model.…` names",
    )
    ap.add_argument("--template-in", choices=["jinja", "json", "tokenizer"], default="jinja")
    ap.add_argument("--size", choices=list(SIZES), default="tiny")
    args = ap.parse_args()

    torch.manual_seed(0)
    tok = tokenizer()
    image_token = tok.convert_tokens_to_ids("<image>")
    strategy = "default" if args.vision == "clip" else "full"
    config = LlavaConfig(
        vision_config=vision_config(args.vision, args.size),
        text_config=text_config(args.text, len(tok), tok, args.rope, args.size),
        image_token_index=image_token,
        vision_feature_layer=-2,
        vision_feature_select_strategy=strategy,
        image_seq_length=(SIZES[args.size]["vision"][4] // SIZES[args.size]["vision"][5]) ** 2,
    )
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Random init leaves some weights at exactly 0 or 1 (norms, biases): perturb every
        # one, so a weight read from the wrong key cannot go unnoticed.
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    processor = LlavaProcessor(
        image_processor=image_processor("llava-pad" if args.pad_to_square else args.vision, SIZES[args.size]["vision"][4]),
        tokenizer=tok,
        patch_size=SIZES[args.size]["vision"][5],
        vision_feature_select_strategy=strategy,
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1 if args.vision == "clip" else 0,
    )
    os.makedirs(args.out, exist_ok=True)
    dtype = getattr(torch, args.dtype)
    shard = "40KB" if args.shards > 1 else "10GB"
    model.to(dtype).save_pretrained(args.out, max_shard_size=shard)
    processor.save_pretrained(args.out)
    if args.config_shape == 4:
        to_transformers_4_shape(os.path.join(args.out, "config.json"))
    if args.key_layout == "nested":
        to_nested_names(args.out)
    move_template(args.out, args.template_in)
    model = LlavaForConditionalGeneration.from_pretrained(args.out, dtype=torch.float32).eval()

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=test_image(), text=prompt, return_tensors="pt")
    # Generation reads `square.png`, which needs no resize: silkie's pixels for it are the
    # processor's exactly, so a greedy path on a random model cannot tip over a rounding.
    side = SIZES[args.size]["vision"][4]
    square = test_image().resize((side, side))
    square_inputs = processor(images=square, text=prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0]
        # The same in bf16, weights and activations, as transformers' eager code computes it.
        half = LlavaForConditionalGeneration.from_pretrained(args.out, dtype=torch.bfloat16).eval()
        bf16_inputs = dict(inputs, pixel_values=inputs["pixel_values"].to(torch.bfloat16))
        logits_bf16 = half(**bf16_inputs).logits[0].float()
        # No end-of-sequence: 16 tokens of argmax, however likely EOS becomes.
        model.generation_config.eos_token_id = None
        generated = model.generate(**square_inputs, do_sample=False, max_new_tokens=16)
        batch = [one_at_a_time_greedy(model, processor, square, q, image) for q, image in BATCH_QUESTIONS]
    new_tokens = generated[0, square_inputs["input_ids"].shape[1] :].tolist()
    completions = {"chosen": "A red square on a blue field.", "rejected": "There are three circles."}
    scored = {name: completion_logps(model, processor, square, messages, text) for name, text in completions.items()}
    test_image().save(os.path.join(args.out, "image.png"))
    square.save(os.path.join(args.out, "square.png"))
    square_pixels = square_inputs["pixel_values"][0]
    reference = {
        "prompt": prompt,
        "square_pixel_values": square_pixels.flatten().tolist(),
        "input_ids": inputs["input_ids"][0].tolist(),
        "pixel_values": inputs["pixel_values"][0].flatten().tolist(),
        "pixel_shape": list(inputs["pixel_values"][0].shape),
        "logits": logits.flatten().tolist(),
        "logits_shape": list(logits.shape),
        "logits_bf16": logits_bf16.flatten().tolist(),
        "greedy": new_tokens,
        "batch_greedy": batch,
        "completions": completions,
        "completion_logps": scored,
    }
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(reference, f)


# Questions of different lengths, with and without the picture: what a batch of requests
# holds, each answered by transformers on its own.
BATCH_QUESTIONS = [
    ("What is in the picture?", True),
    ("Say hello.", False),
    ("Describe the colours you see and where each one is, in as much detail as you can.", True),
]


def one_at_a_time_greedy(model, processor, image, question, with_image):
    """16 greedy tokens (no end-of-sequence) for one user question, the picture first when
    `with_image`; the model's generation config must have no EOS."""
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(images=image if with_image else None, text=prompt, return_tensors="pt")
    generated = model.generate(**inputs, do_sample=False, max_new_tokens=16)
    tokens = generated[0, inputs["input_ids"].shape[1] :].tolist()
    return {"question": question, "image": with_image, "greedy": tokens}


def completion_logps(model, processor, image, messages, completion):
    """The summed log-prob of `completion` after `messages`, as TRL's DPO collator prepares a
    conversational vision row: prompt = the template with the generation prompt; completion =
    the template over prompt and answer, minus the prompt; both tokenised with no special
    tokens added, the prompt's image tokens expanded by the processor."""
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    answer = {"role": "assistant", "content": [{"type": "text", "text": completion}]}
    full = processor.apply_chat_template(messages + [answer])
    assert full.startswith(prompt)
    prompt_inputs = processor(images=image, text=prompt, add_special_tokens=False, return_tensors="pt")
    completion_ids = processor.tokenizer(full[len(prompt) :], add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = torch.cat([prompt_inputs["input_ids"], completion_ids], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=prompt_inputs["pixel_values"]).logits[0]
    logps = torch.log_softmax(logits[:-1].float(), dim=-1)
    targets = ids[0, 1:]
    per_token = logps.gather(1, targets[:, None])[:, 0]
    start = prompt_inputs["input_ids"].shape[1] - 1
    return per_token[start:].sum().item()


def to_nested_names(out):
    """Tensor names as transformers 5 holds them in memory (`model.language_model.…`,
    `model.vision_tower.vision_model.…`, `lm_head.…`), which checkpoints saved that way use."""
    from safetensors.torch import load_file, save_file

    path = os.path.join(out, "model.safetensors")
    renames = [
        ("language_model.model.", "model.language_model."),
        ("language_model.lm_head.", "lm_head."),
        ("vision_tower.", "model.vision_tower.vision_model."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
    ]
    tensors = {}
    for name, tensor in load_file(path).items():
        for old, new in renames:
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        tensors[name] = tensor
    save_file(tensors, path, metadata={"format": "pt"})


def move_template(out, where):
    """The chat template where older checkpoints keep it: chat_template.json, or inside
    tokenizer_config.json."""
    if where == "jinja":
        return
    jinja = os.path.join(out, "chat_template.jinja")
    with open(jinja) as f:
        template = f.read()
    os.remove(jinja)
    if where == "json":
        with open(os.path.join(out, "chat_template.json"), "w") as f:
            json.dump({"chat_template": template}, f)
        return
    path = os.path.join(out, "tokenizer_config.json")
    with open(path) as f:
        config = json.load(f)
    config["chat_template"] = template
    with open(path, "w") as f:
        json.dump(config, f)


def to_transformers_4_shape(path):
    """config.json as transformers 4.x wrote it: `text_config` and `vision_config` keep only
    what differs from their classes' defaults, and RoPE settings sit in `rope_theta` /
    `rope_scaling`."""
    with open(path) as f:
        config = json.load(f)
    vision = config["vision_config"]
    vision_defaults = (CLIPVisionConfig() if vision["model_type"] == "clip_vision_model" else SiglipVisionConfig()).to_dict()
    config["vision_config"] = {k: v for k, v in vision.items() if k == "model_type" or vision_defaults.get(k) != v}
    text = config["text_config"]
    classes = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}
    defaults = classes[text["model_type"]]().to_dict()
    rope = text.pop("rope_parameters", None)
    if rope:
        if rope.get("rope_theta") is not None:
            text["rope_theta"] = rope.pop("rope_theta")
        if rope.get("rope_type", "default") != "default":
            # 4.x named the kind `type`.
            rope["type"] = rope.pop("rope_type")
            text["rope_scaling"] = rope
    keep = {"model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers"}
    config["text_config"] = {
        k: v for k, v in text.items() if k in keep or k not in defaults or defaults.get(k) != v or k.startswith("rope")
    }
    config.pop("transformers_version", None)
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


if __name__ == "__main__":
    main()
