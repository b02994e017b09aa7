"""Summed completion log-probs of preference rows under a LLaVA checkpoint, computed by
transformers under TRL's rule (see llava_fixture.completion_logps).

    python llava_logps.py CHECKPOINT ROWS.json [ADAPTER]

ROWS.json: [{"prompt", "image" (a file), "chosen", "rejected"}, …]. Prints
[{"chosen": logp, "rejected": logp}, …] as JSON. A checkpoint with an `adapter/` folder (LoRA
adapters kept apart, in PEFT's layout) is read through `PeftModel.from_pretrained`, as is
ADAPTER (a PEFT adapter folder of its own) on CHECKPOINT.
"""

import json
import os
import sys

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

sys.path.insert(0, os.path.dirname(__file__))
from llava_fixture import completion_logps  # noqa: E402


def main():
    checkpoint, rows_file = sys.argv[1], sys.argv[2]
    model = LlavaForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    adapter = sys.argv[3] if len(sys.argv) > 3 else os.path.join(checkpoint, "adapter")
    if os.path.isdir(adapter):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    with open(rows_file) as f:
        rows = json.load(f)
    out = []
    for row in rows:
        image = Image.open(row["image"]).convert("RGB")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["prompt"]}]}]
        out.append({side: completion_logps(model, processor, image, messages, row[side]) for side in ("chosen", "rejected")})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
