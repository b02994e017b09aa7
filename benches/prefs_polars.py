"""What a user would write instead of silkie's preference path, in Python polars: VLFeedback
JSONL -> mean of the three aspect ratings per response (unparseable ones drop the response)
-> every pair of an instruction's responses with different means, the higher chosen -> TRL's
conversational DPO layout as Parquet. `cargo bench --bench prefs` runs it beside silkie.

With --images DIR (VLFeedback's layout: DIR/<id>.jpg), each instruction's image is also read,
decoded whole with Pillow (a corrupt one fails here, as in silkie's `load`), hashed, and
written once per distinct image to OUT's `<stem>_images/<digest>.jpg`; the table gains TRL's
`images` column and an image placeholder before each prompt.

usage: python prefs_polars.py VLFEEDBACK.jsonl OUT.parquet [--images DIR]
"""

import argparse
import hashlib
import io
import time
from pathlib import Path

import polars as pl

ASPECTS = ["Helpfulness", "Visual Faithfulness", "Ethical Considerations"]


def store_images(ids, src: Path, out: Path) -> list:
    """Each id's image decoded, hashed and written once under its digest; its relative path."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for id in ids:
        data = (src / f"{id}.jpg").read_bytes()
        Image.open(io.BytesIO(data)).load()
        name = f"{hashlib.blake2b(data, digest_size=32).hexdigest()}.jpg"
        if not (out / name).exists():
            (out / name).write_bytes(data)
        paths.append(f"{out.name}/{name}")
    return paths


def main(src: str, out: str, images: str | None) -> None:
    start = time.perf_counter()
    rows = pl.read_ndjson(src)
    if images:
        images_out = Path(out).with_name(Path(out).stem + "_images")
        rows = rows.with_columns(image=pl.Series(store_images(rows["id"], Path(images), images_out)))
    else:
        rows = rows.with_columns(image=pl.lit(None, pl.String))
    responses = (
        rows.select("id", "prompt", "image", "completions")
        .explode("completions")
        .with_columns(pl.int_range(pl.len()).over("id").alias("index"))
        .unnest("completions")
        .unnest("annotations")
    )
    rating = lambda aspect: pl.col(aspect).struct.field("Rating").cast(pl.Float64, strict=False)
    scored = responses.select(
        "id", "prompt", "image", "index", "response",
        (sum(rating(a) for a in ASPECTS) / len(ASPECTS)).alias("score"),
    ).drop_nulls("score")
    left = scored.rename({"index": "i", "response": "a", "score": "score_a"})
    right = scored.select("id", pl.col("index").alias("j"), pl.col("response").alias("b"), pl.col("score").alias("score_b"))
    pairs = left.join(right, on="id").filter((pl.col("i") < pl.col("j")) & (pl.col("score_a") != pl.col("score_b")))
    a_wins = pl.col("score_a") > pl.col("score_b")
    item = lambda text, kind: pl.struct(text=text, type=pl.lit(kind))
    message = lambda role, *items: pl.concat_list(pl.struct(content=pl.concat_list(*items), role=pl.lit(role)))
    prompt_items = [item(pl.col("prompt"), "text")]
    if images:
        prompt_items.insert(0, item(pl.lit(None, pl.String), "image"))
    columns = [
        message("user", *prompt_items).alias("prompt"),
        message("assistant", item(pl.when(a_wins).then("a").otherwise("b"), "text")).alias("chosen"),
        message("assistant", item(pl.when(a_wins).then("b").otherwise("a"), "text")).alias("rejected"),
    ]
    if images:
        columns.append(pl.concat_list("image").alias("images"))
    trl = pairs.select(columns)
    trl.write_parquet(out)
    print(f"{time.perf_counter() - start:.2f} s, {trl.height} pairs")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--images")
    args = ap.parse_args()
    main(args.src, args.out, args.images)
