"""What a user would write instead of silkie's preference path, in Python polars: VLFeedback
JSONL -> mean of the three aspect ratings per response (unparseable ones drop the response)
-> every pair of an instruction's responses with different means, the higher chosen -> TRL's
conversational DPO layout as Parquet. `cargo bench --bench prefs` runs it beside silkie.

usage: python prefs_polars.py VLFEEDBACK.jsonl OUT.parquet
"""

import sys
import time

import polars as pl

ASPECTS = ["Helpfulness", "Visual Faithfulness", "Ethical Considerations"]


def main(src: str, out: str) -> None:
    start = time.perf_counter()
    rows = pl.read_ndjson(src)
    responses = (
        rows.select("id", "prompt", "completions")
        .explode("completions")
        .with_columns(pl.int_range(pl.len()).over("id").alias("index"))
        .unnest("completions")
        .unnest("annotations")
    )
    rating = lambda aspect: pl.col(aspect).struct.field("Rating").cast(pl.Float64, strict=False)
    scored = responses.select(
        "id", "prompt", "index", "response",
        (sum(rating(a) for a in ASPECTS) / len(ASPECTS)).alias("score"),
    ).drop_nulls("score")
    left = scored.rename({"index": "i", "response": "a", "score": "score_a"})
    right = scored.select("id", pl.col("index").alias("j"), pl.col("response").alias("b"), pl.col("score").alias("score_b"))
    pairs = left.join(right, on="id").filter((pl.col("i") < pl.col("j")) & (pl.col("score_a") != pl.col("score_b")))
    a_wins = pl.col("score_a") > pl.col("score_b")
    message = lambda role, text: pl.concat_list(
        pl.struct(content=pl.concat_list(pl.struct(text=text, type=pl.lit("text"))), role=pl.lit(role))
    )
    trl = pairs.select(
        message("user", pl.col("prompt")).alias("prompt"),
        message("assistant", pl.when(a_wins).then("a").otherwise("b")).alias("chosen"),
        message("assistant", pl.when(a_wins).then("b").otherwise("a")).alias("rejected"),
    )
    trl.write_parquet(out)
    print(f"{time.perf_counter() - start:.2f} s, {trl.height} pairs")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
