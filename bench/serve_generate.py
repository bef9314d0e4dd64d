"""Text generation served over HTTP vs the transformers pipeline in-process, on one export.

For each model (a GPT-2-mini and a Llama-mini, each pretrained briefly here by the Cloze
engine on ../shared/data/en/pretrain text, so that greedy output is not degenerate; cached in
--workdir): the `text-generation` pipeline in this process, greedy, 32 new tokens, one prompt
at a time (the reference: what a user could run themselves) and one decoder step in-process
(a forward of one token with the key/value cache: `cache=`, transformers 5's name for
`past_key_values`); then `cloze api` in its
own process on default settings, the model imported over HTTP and loaded with `POST /load`:
`/generate` with one client, then with 16 concurrent clients, then streamed (`"stream":
true`) with one client, timing the first token's event. Reports p50/p99 latency, new
tokens/s, errors, whether the served greedy text equals the pipeline's for every prompt, and
the time to the first streamed token against one decoder step, beside the goals of issue 25.

    .venv/bin/python bench/serve_generate.py --workdir /tmp/sgen --json /tmp/sgen/gen.json
    .venv/bin/python bench/serve_generate.py --quick --workdir /tmp/sgen   # smoke run

Nothing else should run on the machine meanwhile: every figure is a wall-clock time.
"""

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import serve_fill_mask as sfm  # it puts the checkout on sys.path

from jobspec import PretrainSpec, parse_spec
from workers.engine import prepare_data, run_pretraining

SEED = 0
CLIENTS = 16
NEW_TOKENS = 32
MODELS = {  # name: (architecture, size preset, vocabulary, batch, sequence length)
    "GPT-2-mini": ("gpt2", "mini", 8192, 16, 128),
    "Llama-mini": ("llama", "mini", 8192, 16, 128),
}


def pretrain(name: str, steps: int, work: Path, text: Path) -> Path:
    arch, size, vocab, batch, length = MODELS[name]
    spec = parse_spec({
        "type": "pretrain", "dataset_id": "bench",
        "model": {"architecture": arch, "size": size},
        "tokenizer": {"vocab_size": vocab},
        "hyperparameters": {"max_steps": steps, "batch_size": batch, "sequence_length": length,
                            "seed": SEED, "warmup_steps": steps // 10, "learning_rate": 1e-3},
        "log_every": max(1, steps // 4), "eval_every": 10**9, "checkpoint_every": 10**9,
    })
    assert isinstance(spec, PretrainSpec)
    out = work / f"{name}-{steps}"
    if (out / "run" / "export" / "config.json").exists():  # an earlier run in --workdir
        print(f"  reusing {out / 'run' / 'export'}", file=sys.stderr)
        return out / "run" / "export"
    prepare_data(spec, str(text), "txt", str(out / "data"), sfm.Quiet())
    result = run_pretraining(spec, str(out / "data"), str(out / "run"), sfm.Quiet())
    assert result.export_dir is not None
    return Path(result.export_dir)


def prompts(count: int) -> list[str]:
    """The first 4-12 words of held-out English sentences (seeded)."""
    rng = random.Random(SEED)
    text = (sfm.DATA / "valid.txt").read_text(encoding="utf-8")
    chosen = []
    for sentence in text.replace("\n", " ").split(". "):
        words = sentence.split()
        if 8 <= len(words) <= 30 and all(w.isascii() for w in words):
            chosen.append(words)
    rng.shuffle(chosen)
    return [" ".join(words[:rng.randint(4, 12)]) for words in chosen[:count]]


# ----------------------------------------------------------------------------- measuring

def summary(latencies: list[float], wall: float, errors: int, new_tokens: int
            ) -> dict[str, Any]:
    ordered = sorted(latencies) or [float("nan")]
    return {"p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "req_s": len(latencies) / wall, "new_tokens_s": new_tokens / wall,
            "new_tokens": new_tokens, "errors": errors, "requests": len(latencies)}


def run_pipeline(export: Path, texts: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The pipeline, greedy, one prompt at a time; its new tokens counted by a second,
    untimed call that returns the ids (the timed one returns text, as a user calls it)."""
    from transformers import pipeline

    pipe = pipeline("text-generation", model=str(export), device="cpu")
    kwargs = {"do_sample": False, "max_new_tokens": NEW_TOKENS}
    for text in texts[:3]:
        pipe(text, return_full_text=False, **kwargs)  # warm-up, as the server's load does
    answers, latencies = [], []
    started = time.perf_counter()
    for text in texts:
        t0 = time.perf_counter()
        answers.append(pipe(text, return_full_text=False, **kwargs)[0]["generated_text"])
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    new = 0
    for text in texts:
        full = pipe(text, return_tensors=True, **kwargs)[0]["generated_token_ids"]
        new += len(full) - len(pipe.tokenizer(text)["input_ids"])
    return summary(latencies, wall, 0, new), answers


def decoder_step(export: Path, texts: list[str], steps: int = NEW_TOKENS) -> dict[str, Any]:
    """One decoder step in-process, fp32, as the pipeline's model runs it: a forward of one
    token with the key/value cache (a DynamicCache, updated in place) of the prompt and the
    tokens before it (median over every
    step of greedy decoding from each prompt); the prompt's own forward (prefill) beside it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    tokenizer = AutoTokenizer.from_pretrained(str(export))
    model = AutoModelForCausalLM.from_pretrained(str(export)).eval()
    step_times, prefill_times = [], []
    with torch.inference_mode():
        for n, text in enumerate(texts):
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            cache = DynamicCache(config=model.config)
            t0 = time.perf_counter()
            out = model(input_ids=ids, cache=cache, use_cache=True)
            took = time.perf_counter() - t0
            if n:  # the first prompt warms up
                prefill_times.append(took)
            for _ in range(steps):
                token = out.logits[:, -1:].argmax(-1)
                t0 = time.perf_counter()
                out = model(input_ids=token, cache=cache, use_cache=True)
                if n:
                    step_times.append(time.perf_counter() - t0)
    return {"step_ms": 1000 * statistics.median(step_times),
            "prefill_ms": 1000 * statistics.median(prefill_times),
            "threads": torch.get_num_threads()}


def body(text: str, stream: bool = False) -> dict[str, Any]:
    """/generate, greedy (TGI's default), 32 new tokens, the continuation alone; details for
    the count of new tokens."""
    return {"inputs": text, "stream": stream,
            "parameters": {"max_new_tokens": NEW_TOKENS, "return_full_text": False,
                           "details": not stream}}


def run_clients(url: str, texts: list[str], clients: int, rounds: int
                ) -> tuple[dict[str, Any], list[Any]]:
    """As serve_fill_mask.run_clients: `clients` threads, each on its own keep-alive
    connection (made and used once before the clock starts), share the prompts `rounds`
    times over. Each prompt's answer is kept (None: never answered, or answered differently
    in two rounds)."""
    answers: list[Any] = [None] * len(texts)
    seen: list[set[str]] = [set() for _ in texts]
    latencies: list[float] = []
    errors, new = [0], [0]
    lock = threading.Lock()
    work = iter(range(rounds * len(texts)))
    ready = threading.Barrier(clients + 1)

    def client() -> None:
        with httpx.Client(timeout=600) as http:
            http.post(url, json={"inputs": texts[0], "parameters": {"max_new_tokens": 1}}
                      ).raise_for_status()  # connected
            ready.wait()
            while True:
                with lock:
                    n = next(work, None)
                if n is None:
                    return
                i = n % len(texts)
                t0 = time.perf_counter()
                r = http.post(url, json=body(texts[i]))
                took = time.perf_counter() - t0
                with lock:
                    latencies.append(took)
                    if r.status_code == 200:
                        out = r.json()[0]
                        seen[i].add(out["generated_text"])
                        new[0] += out["details"]["generated_tokens"]
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    for i, texts_seen in enumerate(seen):
        if len(texts_seen) == 1:
            answers[i] = next(iter(texts_seen))
    return summary(latencies, wall, errors[0], new[0]), answers


def run_stream(url: str, texts: list[str]) -> tuple[dict[str, Any], list[Any]]:
    """One client, streamed: the time from sending the request to the first token's event,
    and to the last; the answer is the events' texts joined."""
    first: list[float] = []
    whole: list[float] = []
    answers: list[str | None] = []
    errors = new = 0
    with httpx.Client(timeout=600) as http:
        http.post(url, json=body(texts[0])).raise_for_status()  # connected
        started = time.perf_counter()
        for text in texts:
            pieces: list[str] = []
            t0 = time.perf_counter()
            with http.stream("POST", url, json=body(text, stream=True)) as r:
                if r.status_code != 200:
                    r.read()
                    errors += 1
                    answers.append(None)
                    continue
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    event = json.loads(line[5:])
                    if not pieces:
                        first.append(time.perf_counter() - t0)
                    if "token" not in event:  # an error event
                        errors += 1
                        break
                    pieces.append(event["token"]["text"])
            whole.append(time.perf_counter() - t0)
            new += len(pieces)
            answers.append("".join(pieces))
        wall = time.perf_counter() - started
    figures = summary(whole, wall, errors, new)
    figures["ttft_p50_ms"] = 1000 * statistics.median(first) if first else float("nan")
    figures["ttft_p99_ms"] = (1000 * sorted(first)[min(len(first) - 1, int(0.99 * len(first)))]
                              if first else float("nan"))
    return figures, answers


def run_one_client(base: str, model_id: str, texts: list[str]
                   ) -> tuple[dict[str, Any], list[Any]]:
    """One client on one keep-alive connection: POST /load, one request to connect, then
    the prompts in turn."""
    url = f"{base}/v1/models/{model_id}/generate"
    answers: list[str | None] = []
    latencies: list[float] = []
    errors = new = 0
    with httpx.Client(timeout=600) as http:
        loaded = http.post(f"{base}/v1/models/{model_id}/load").json()
        http.post(url, json=body(texts[0])).raise_for_status()
        started = time.perf_counter()
        for text in texts:
            t0 = time.perf_counter()
            r = http.post(url, json=body(text))
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors += 1
                answers.append(None)
                continue
            out = r.json()[0]
            answers.append(out["generated_text"])
            new += out["details"]["generated_tokens"]
        wall = time.perf_counter() - started
    figures = summary(latencies, wall, errors, new)
    figures.update(load_seconds=loaded.get("load_seconds"), precision=loaded.get("precision"))
    return figures, answers


def measure(name: str, export: Path, texts: list[str], work: Path, rounds: int
            ) -> dict[str, Any]:
    print(f"== {name}: pipeline in-process", file=sys.stderr)
    rows: dict[str, Any] = {}
    rows["pipeline"], reference = run_pipeline(export, texts)
    print(f"== {name}: one decoder step in-process", file=sys.stderr)
    rows["decoder_step"] = decoder_step(export, texts[:8])
    server = sfm.Server(work / f"home-{name}", {})
    try:
        model_id = server.import_model(export, name)
        task = httpx.get(f"{server.url}/v1/models/{model_id}").json().get("task")
        assert task == "text-generation", f"imported as {task}"
        url = f"{server.url}/v1/models/{model_id}/generate"
        print(f"== {name}: HTTP, 1 client", file=sys.stderr)
        rows["http_1"], answers = run_one_client(server.url, model_id, texts)
        rows["http_1"]["same_text"] = sum(a == b for a, b in zip(answers, reference, strict=True))
        print(f"== {name}: HTTP, {CLIENTS} clients", file=sys.stderr)
        rows[f"http_{CLIENTS}"], answers = run_clients(url, texts, CLIENTS, rounds)
        rows[f"http_{CLIENTS}"]["same_text"] = sum(
            a == b for a, b in zip(answers, reference, strict=True))
        print(f"== {name}: HTTP, 1 client, streamed", file=sys.stderr)
        rows["stream_1"], answers = run_stream(url, texts)
        rows["stream_1"]["same_text"] = sum(
            a == b for a, b in zip(answers, reference, strict=True))
    finally:
        server.stop()
    return rows


def report(results: dict[str, dict[str, Any]], texts: list[str], steps: int) -> None:
    for name, rows in results.items():
        arch, size, _, batch, length = MODELS[name]
        print(f"\n== {name} ({arch}, preset {size!r}, vocabulary {rows['vocab']}, pretrained "
              f"{steps} steps of {batch} x {length}); {len(texts)} prompts of 4-12 words, "
              f"greedy, {NEW_TOKENS} new tokens at most")
        print(f"{'':30} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} {'new tok/s':>10} "
              f"{'errors':>7} {'same text':>10}")
        labels = {"pipeline": "pipeline, in-process", "http_1": "HTTP, 1 client",
                  f"http_{CLIENTS}": f"HTTP, {CLIENTS} clients",
                  "stream_1": "HTTP, 1 client, streamed"}
        for key, label in labels.items():
            r = rows[key]
            same = "-" if key == "pipeline" else f"{r['same_text']}/{len(texts)}"
            print(f"{label:30} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['req_s']:7.2f} "
                  f"{r['new_tokens_s']:10.1f} {r['errors']:7d} {same:>10}")
        pipe, one, many = rows["pipeline"], rows["http_1"], rows[f"http_{CLIENTS}"]
        stream, step = rows["stream_1"], rows["decoder_step"]
        print(f"one decoder step in-process (fp32, {step['threads']} threads, KV cache): "
              f"{step['step_ms']:.2f} ms p50; the prompt's forward {step['prefill_ms']:.2f} ms")
        print(f"HTTP 1-client p50 / pipeline p50: {one['p50_ms'] / pipe['p50_ms']:.2f}x "
              "(goal <= 1.0x)")
        print(f"HTTP {CLIENTS}-client new tokens/s / pipeline's: "
              f"{many['new_tokens_s'] / pipe['new_tokens_s']:.2f}x (goal >= 4x)")
        print(f"time to first streamed token p50 {stream['ttft_p50_ms']:.1f} ms "
              f"(p99 {stream['ttft_p99_ms']:.1f}) / one decoder step: "
              f"{stream['ttft_p50_ms'] / step['step_ms']:.2f}x (goal <= 2x)")
        print(f"greedy text equal to the pipeline's: 1 client {one['same_text']}/{len(texts)}, "
              f"{CLIENTS} clients {many['same_text']}/{len(texts)} (every round alike), "
              f"streamed {stream['same_text']}/{len(texts)}")
        print(f"errors: {one['errors'] + many['errors'] + stream['errors']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2,
                        help=f"times the {CLIENTS} clients go through the prompts")
    parser.add_argument("--steps", type=int, default=300, help="pretraining steps")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 16 prompts, 1 round, 60 pretraining steps")
    parser.add_argument("--workdir", help="keep the models here (default: a temp dir)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.rounds, args.steps = 16, 1, 60
    texts = prompts(args.prompts)
    results = {}
    with tempfile.TemporaryDirectory(prefix="cloze-gen-bench-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        text = work / "corpus.txt"
        if not text.exists():
            text = sfm.corpus(work, 4)
        for name in args.models:
            shutil.rmtree(work / f"home-{name}", ignore_errors=True)  # an earlier run's
            print(f"== {name}: pretraining", file=sys.stderr)
            export = pretrain(name, args.steps, work, text)
            results[name] = measure(name, export, texts, work, args.rounds)
            config = json.loads((export / "config.json").read_text())
            results[name]["vocab"] = config["vocab_size"]
    report(results, texts, args.steps)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
