"""The DPO step of `cargo bench --bench dpo`, in PyTorch eager: silkie's built-in tiny VLM
rebuilt layer for layer (src/model/tiny/mod.rs over burn-nn's pre-norm TransformerEncoder), the
same batch shapes, the same loss, clipping and AdamW. The bench passes silkie's parameter count
in `--params`; a model of another size is refused rather than timed.

    python benches/dpo_torch.py --d-model 64 --layers 2 --params N [--threads 2] [--together]

Prints one JSON line: {"params", "threads", "together", "ms_per_step", "steps"}.
"""

import argparse
import json
import math
import sys
import time
import warnings

# The venv has no NumPy, which this script never needs; torch warns about it on import.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

VOCAB = 259  # 256 bytes, BOS, EOS, PAD (src/model/tokenizer.rs)


class Block(nn.Module):
    """burn-nn's TransformerEncoderLayer with norm_first: attention, then the feed-forward,
    each behind its own LayerNorm and added back; attention spelled out as burn computes it
    (scores, masked fill, softmax, weighted sum) rather than a fused kernel burn lacks."""

    def __init__(self, d_model, heads, d_ff):
        super().__init__()
        self.heads = heads
        self.norm_attention = nn.LayerNorm(d_model, eps=1e-5)
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.output = nn.Linear(d_model, d_model)
        self.norm_ff = nn.LayerNorm(d_model, eps=1e-5)
        self.inner = nn.Linear(d_model, d_ff)
        self.outer = nn.Linear(d_ff, d_model)

    def split(self, x):
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x, future):
        b, t, d = x.shape
        h = self.norm_attention(x)
        q, k, v = self.split(self.query(h)), self.split(self.key(h)), self.split(self.value(h))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)
        weights = scores.masked_fill(future, -1.0e4).softmax(-1)
        context = (weights @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.output(context)
        return x + self.outer(F.gelu(self.inner(self.norm_ff(x))))


class TinyVlm(nn.Module):
    def __init__(self, d_model, layers, heads, d_ff, image_size=32, patch_size=8, max_tokens=64):
        super().__init__()
        self.patch_size = patch_size
        patches = (image_size // patch_size) ** 2
        self.patch = nn.Linear(3 * patch_size * patch_size, d_model)
        self.patch_norm = nn.LayerNorm(d_model, eps=1e-5)
        self.tokens = nn.Embedding(VOCAB, d_model)
        self.positions = nn.Embedding(patches + max_tokens, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, d_ff) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model, eps=1e-5)
        self.head = nn.Linear(d_model, VOCAB)

    def forward(self, images, tokens):
        b, c, height, width = images.shape
        p = self.patch_size
        patches = images.reshape(b, c, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(b, -1, c * p * p)
        image = self.patch_norm(self.patch(patches * 2.0 - 1.0))
        x = torch.cat([image, self.tokens(tokens)], 1)
        length = x.shape[1]
        x = x + self.positions(torch.arange(length)).unsqueeze(0)
        future = torch.ones(length, length, dtype=torch.bool).triu(1)
        for block in self.blocks:
            x = block(x, future)
        return self.head(self.norm(x[:, image.shape[1] :]))


def completion_logps(logits, tokens, mask):
    """TRL's get_batch_logps: logits at t score the token at t+1, summed over the completion."""
    picked = logits[:, :-1].log_softmax(-1).gather(2, tokens[:, 1:].unsqueeze(2)).squeeze(2)
    return (picked * mask[:, 1:]).sum(1)


def side(batch, tokens, salt):
    """The token rows and completion masks `silkie::train::bench` feeds."""
    index = torch.arange(batch * tokens)
    ids = ((index * 31 + salt) % 256).reshape(batch, tokens)
    mask = (index % tokens >= tokens // 2).reshape(batch, tokens).float()
    return ids, mask


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-model", type=int, required=True)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--params", type=int, required=True, help="silkie's parameter count")
    ap.add_argument("--together", action="store_true", help="chosen and rejected in one forward, as TRL does")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = TinyVlm(args.d_model, args.layers, args.heads, 2 * args.d_model, max_tokens=args.tokens)
    params = sum(p.numel() for p in model.parameters())
    if params != args.params:
        sys.exit(f"dpo_torch.py: this model has {params} parameters, silkie's has {args.params}: not the same model")
    images = torch.full((args.batch, 3, 32, 32), 0.5)
    chosen, rejected = side(args.batch, args.tokens, 1), side(args.batch, args.tokens, 2)
    with torch.no_grad():
        ref_chosen = completion_logps(model(images, chosen[0]), *chosen)
        ref_rejected = completion_logps(model(images, rejected[0]), *rejected)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    beta = 0.1

    def step():
        if args.together:
            both = torch.cat([chosen[0], rejected[0]]), torch.cat([chosen[1], rejected[1]])
            logps = completion_logps(model(torch.cat([images, images]), both[0]), *both)
            policy_chosen, policy_rejected = logps[: args.batch], logps[args.batch :]
        else:
            policy_chosen = completion_logps(model(images, chosen[0]), *chosen)
            policy_rejected = completion_logps(model(images, rejected[0]), *rejected)
        margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
        loss = -F.logsigmoid(beta * margin).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    step()  # warm-up, left out as in silkie's bench
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    ms = (time.perf_counter() - start) / args.steps * 1e3
    out = {"params": params, "threads": args.threads, "together": args.together, "ms_per_step": ms, "steps": args.steps}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
