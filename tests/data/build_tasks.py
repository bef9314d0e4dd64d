"""Build the sentence-pair, regression and multi-label test sets (README.md here says what
each is) from the shared data set's English validation prose, `en/pretrain/valid.txt`:
21 public-domain documents of four kinds (State of the Union addresses, Moby-Dick, Jane
Austen's novels, the Bible and commentaries on it).

    python tests/data/build_tasks.py [path/to/shared/data]

Deterministic (seeded; gzip without a timestamp): the same shared data gives byte-identical
files. Each file holds JSON lines with a "split" (train, valid, test).
"""

import gzip
import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data"
SOURCE = SHARED / "en/pretrain/valid.txt"
# The kind of each document, by its line in valid.txt (1-based).
FAMILIES = {**dict.fromkeys((1, 2), "address"), **dict.fromkeys(range(3, 10), "whaling"),
            **dict.fromkeys(range(10, 16), "austen"), **dict.fromkeys(range(16, 22), "bible")}
SIZES = {"train": 1200, "valid": 200, "test": 200}
MULTI_SIZES = {"train": 700, "valid": 150, "test": 150}
FUNCTION_WORDS = frozenset(
    "the of and to a in that is was he for it with as his on be at by i this had not are but "
    "from or have an they which one you were her all she there would their we him been has "
    "when who will more no if out so said what up its about into than them can only other "
    "new some could time these two may then do first any my now such like our over man me "
    "even most made after also did many before must through back years where much your way "
    "well down should because each just those people how too little state good very make "
    "world still own see men work long get here between both life being under never day same "
    "another know while last might us great old year off come since against go came right "
    "used take three".split())
# Multi-label: a sentence has a label when it holds a word of its family.
KEYWORDS = {
    "religion": {"god", "lord", "christ", "holy", "faith", "prayer", "heaven", "sin",
                 "spirit", "psalm", "jesus", "soul", "bless", "blessed", "grace"},
    "government": {"congress", "government", "law", "laws", "states", "nation", "public",
                   "constitution", "president", "senate", "treaty", "citizens", "country"},
    "sea": {"whale", "sea", "ship", "boat", "deck", "captain", "ocean", "sail", "water",
            "harpoon", "crew", "waves", "shore"},
    "family": {"sister", "mother", "father", "brother", "daughter", "son", "aunt", "uncle",
               "wife", "husband", "cousin", "marriage", "married"},
}


def write_gz(name: str, data: bytes) -> None:
    with (HERE / name).open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    print(f"{name}: {len(data):,} bytes, {(HERE / name).stat().st_size:,} compressed")


def sentences() -> list[tuple[int, str]]:
    """(document line, sentence) of 6 to 40 words, in document order."""
    out = []
    with SOURCE.open(encoding="utf-8") as f:
        for doc, line in enumerate(f, start=1):
            for sentence in re.split(r"(?<=[.!?])\s+", line.strip()):
                if 6 <= len(sentence.split()) <= 40:
                    out.append((doc, sentence))
    return out


def words(sentence: str) -> list[str]:
    return re.findall(r"[a-z]+", sentence.lower())


def split_of(n: int, sizes: dict[str, int] = SIZES) -> str:
    return "train" if n < sizes["train"] else \
        "valid" if n < sizes["train"] + sizes["valid"] else "test"


def pairs(rng: random.Random, found: list[tuple[int, str]]) -> bytes:
    """Two sentences, and whether the second ("text_pair") has more words than the first
    ("longer") or fewer ("shorter"; equal lengths are left out): a relation of the pair,
    which no one of its texts tells, learnt from the segments as the model's pair format
    marks them (token_type_ids for BERT) by a small model in a few hundred steps."""
    sentences = [s for _, s in found]
    lines: list[dict[str, str]] = []
    while len(lines) < sum(SIZES.values()):
        text, pair = rng.choice(sentences), rng.choice(sentences)
        if len(text.split()) == len(pair.split()):
            continue
        label = "longer" if len(pair.split()) > len(text.split()) else "shorter"
        lines.append({"text": text, "text_pair": pair, "label": label,
                      "split": split_of(len(lines))})
    return "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode()


def regression(rng: random.Random, found: list[tuple[int, str]]) -> bytes:
    """label: the share of the sentence's words that are function words (0 to 1)."""
    chosen = rng.sample(found, sum(SIZES.values()))
    lines = []
    for n, (_, sentence) in enumerate(chosen):
        ws = words(sentence) or ["x"]
        share = sum(w in FUNCTION_WORDS for w in ws) / len(ws)
        lines.append({"text": sentence, "label": round(share, 4), "split": split_of(n)})
    return "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode()


def multi_label(rng: random.Random, found: list[tuple[int, str]]) -> bytes:
    """labels: the keyword families whose words the sentence holds (none to several);
    sentences with some label are three in four (the prose has about 750 of them, so this
    set is smaller: MULTI_SIZES)."""
    labelled = [(s, sorted(k for k, kw in KEYWORDS.items() if kw & set(words(s))))
                for _, s in found]
    some = [x for x in labelled if x[1]]
    none = [x for x in labelled if not x[1]]
    total = sum(MULTI_SIZES.values())
    chosen = rng.sample(some, total * 3 // 4) + rng.sample(none, total - total * 3 // 4)
    rng.shuffle(chosen)
    lines = [{"text": s, "labels": labels, "split": split_of(n, MULTI_SIZES)}
             for n, (s, labels) in enumerate(chosen)]
    return "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode()


def main() -> None:
    found = sentences()
    write_gz("en-pairs.jsonl.gz", pairs(random.Random(1), found))
    write_gz("en-regression.jsonl.gz", regression(random.Random(2), found))
    write_gz("en-multilabel.jsonl.gz", multi_label(random.Random(3), found))


if __name__ == "__main__":
    main()
