"""The LLaVA DPO step of `cargo bench --bench llava`, in PyTorch eager: the same checkpoint
folder through transformers, LoRA through peft on the same layers (the language model's
attention and MLP projections, rank r, alpha 2r), the same batch — silkie's fixed pairs
(src/train/bench.rs, CHECKPOINT_ROWS) about the same picture, prepared by TRL's rule — and the
same step: sigmoid DPO at beta 0.1 against reference log-probs computed once, clipping at 1,
AdamW at 1e-4 without weight decay.

    python benches/llava_dpo_torch.py CHECKPOINT PICTURE [--lora 16] [--steps 10] [--threads N]

Prints one JSON line: {"params", "trainable", "tokens", "ms_per_step", "tokens_per_second",
"peak_rss_mb", "threads"}.
"""

import argparse
import json
import os
import resource
import sys
import time
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoProcessor, LlavaForConditionalGeneration  # noqa: E402

ROWS = [
    ("What is in the picture?", "A red square on a blue field.", "There are three circles."),
    ("How many circles are there?", "There are three circles.", "A small house."),
    ("Describe the image in detail.", "The image shows a small house beside a tall tree.", "A red square."),
    ("What colour is the square?", "The square is red.", "The lazy dog sleeps."),
]
BATCH = 8


def side(processor, image, answers):
    """One side's rows: ids (right-padded), completion mask, pixel values; by TRL's rule."""
    rows, masks = [], []
    for i in range(BATCH):
        prompt_text, answer = ROWS[i % len(ROWS)][0], answers[i % len(ROWS)]
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt_text}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        full = processor.apply_chat_template(
            messages + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        )
        prompt_ids = processor(images=image, text=prompt, add_special_tokens=False)["input_ids"][0]
        completion_ids = processor.tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        rows.append(list(prompt_ids) + completion_ids)
        masks.append([False] * len(prompt_ids) + [True] * len(completion_ids))
    length = max(len(r) for r in rows)
    pad = processor.tokenizer.pad_token_id or 0
    ids = torch.tensor([r + [pad] * (length - len(r)) for r in rows])
    mask = torch.tensor([m + [False] * (length - len(m)) for m in masks])
    pixels = processor.image_processor(images=[image] * BATCH, return_tensors="pt")["pixel_values"]
    return ids, mask, pixels, sum(len(r) for r in rows)


def logps(model, ids, mask, pixels):
    logits = model(input_ids=ids, pixel_values=pixels).logits[:, :-1].float()
    per_token = torch.log_softmax(logits, -1).gather(2, ids[:, 1:, None])[..., 0]
    return (per_token * mask[:, 1:]).sum(-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("picture")
    ap.add_argument("--lora", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration.from_pretrained(args.checkpoint, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(args.checkpoint)
    image = Image.open(args.picture).convert("RGB")
    params = sum(p.numel() for p in model.parameters())
    if args.lora:
        targets = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
        config = LoraConfig(r=args.lora, lora_alpha=2 * args.lora, lora_dropout=0.0, target_modules=targets)
        model = get_peft_model(model, config)
    else:
        for p in model.model.vision_tower.parameters():
            p.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    chosen = side(processor, image, [r[1] for r in ROWS])
    rejected = side(processor, image, [r[2] for r in ROWS])
    with torch.no_grad():
        reference = (logps(model, *chosen[:3]), logps(model, *rejected[:3]))
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0)
    times = []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        policy = (logps(model, *chosen[:3]), logps(model, *rejected[:3]))
        margin = 0.1 * ((policy[0] - reference[0]) - (policy[1] - reference[1]))
        loss = -F.logsigmoid(margin).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        times.append(time.perf_counter() - start)
    per_step = sum(times[1:]) / max(len(times) - 1, 1)
    tokens = chosen[3] + rejected[3]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "params": params,
                "trainable": sum(p.numel() for p in trainable),
                "tokens": tokens,
                "ms_per_step": per_step * 1e3,
                "tokens_per_second": tokens / per_step,
                "peak_rss_mb": peak,
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
