"""Build brown-qa.jsonl.gz, a small SQuAD-style extractive QA set, from the Brown corpus's
part-of-speech files in the shared data set (README.md here says what and why):

    python tests/data/build_qa.py [path/to/shared/data]

A context is one to three consecutive Brown sentences (tokens joined by spaces); its
questions ask for the first word of a part of speech ("What is the first number in the
text?"); the answer is that word (with the words of the same part of speech right after
it: "two hundred"), its answer_start the character where it begins. About one question in
seven asks for a part of speech the context lacks: unanswerable (SQuAD 2.0: "answers": []).
Deterministic: the same shared data gives a byte-identical file (seeded choices, gzip
without a timestamp).
"""

import gzip
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data"
# What a question asks for, and the Brown tags that are it.
KINDS = {"name": lambda tag: tag.startswith("np"), "number": lambda tag: tag == "cd",
         "adjective": lambda tag: tag.startswith("jj"),
         "past tense verb": lambda tag: tag == "vbd"}
QUESTIONS = {"train": 1600, "valid": 200, "test": 200}


def sentences(path: Path) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = [[]]
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                continue
            if not line.strip():
                if out[-1]:
                    out.append([])
                continue
            token, tag = line.rstrip("\n").split("\t")[:2]
            out[-1].append((token, tag))
    return [s for s in out if s]


def question(words: list[tuple[str, str]], kind: str) -> dict:
    """The question for a context's words; answers [] when no word is of that kind."""
    context = " ".join(w for w, _ in words)
    starts, at = [], 0
    for w, _ in words:
        starts.append(at)
        at += len(w) + 1
    test = KINDS[kind]
    answers = []
    first = next((i for i, (_, tag) in enumerate(words) if test(tag)), None)
    if first is not None:
        last = first
        while last + 1 < len(words) and test(words[last + 1][1]):
            last += 1
        text = " ".join(w for w, _ in words[first:last + 1])
        answers = [{"text": text, "answer_start": starts[first]}]
        assert context[starts[first]:starts[first] + len(text)] == text
    return {"context": context, "question": f"What is the first {kind} in the text?",
            "answers": answers}


def main() -> None:
    rng = random.Random(0)
    lines = []
    for split, wanted in QUESTIONS.items():
        pool = sentences(SHARED / "en/pos" / f"brown-{split}.conll.gz")
        made, i = 0, 0
        while made < wanted:
            size = rng.choice((1, 1, 1, 2))
            words = [w for s in pool[i:i + size] for w in s]
            i += size
            if len(words) > 80:  # a few very long sentences: skipped
                continue
            present = [k for k in sorted(KINDS) if any(KINDS[k](t) for _, t in words)]
            absent = [k for k in sorted(KINDS) if k not in present]
            # Mostly answerable: one question in about seven has no answer.
            kinds = [rng.choice(absent) if absent and (not present or rng.random() < 0.15)
                     else rng.choice(present) for _ in range(2)]
            for kind in kinds:
                record = question(words, kind)
                lines.append(json.dumps({"id": f"{split}-{made}", **record, "split": split},
                                        ensure_ascii=False))
                made += 1
    data = ("\n".join(lines) + "\n").encode()
    with (HERE / "brown-qa.jsonl.gz").open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    print(f"brown-qa.jsonl.gz: {len(lines)} questions, {len(data):,} bytes, "
          f"{(HERE / 'brown-qa.jsonl.gz').stat().st_size:,} compressed")


if __name__ == "__main__":
    main()
