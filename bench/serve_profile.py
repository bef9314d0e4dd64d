"""Where a fill-mask request's time goes: the HTTP stack, the model pass, the rest.

Uses a server home and an export that `bench/serve_fill_mask.py --workdir W` left behind:

    .venv/bin/python bench/serve_profile.py --workdir /tmp/sfm

Prints p50 over 200 calls of: GET /health and GET /v1/models/{id} over HTTP (the stack
without a model), POST fill-mask over HTTP, then in-process: checking and tokenizing
(make_plan), our batched forward for one sentence, its encoder alone (eager and traced +
frozen with torch.jit), building the answer, and the transformers pipeline's whole call.
Run it alone on the machine.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.inference.fill_mask import FillMaskRequest, answer, make_plan  # noqa: E402
from service.inference.pipelines import _warm_up_seqs  # noqa: E402
from service.inference.served import Seq, Served  # noqa: E402
from service.settings import get_settings  # noqa: E402

TEXT = "the [MASK] of the union is strong and the people are free."


def p50(name: str, call: Callable[[], Any], n: int = 200, scale: float = 1.0) -> None:
    for _ in range(10):
        call()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    print(f"| {name} | {1000 * scale * statistics.median(times):.2f} |")


def over_http(home: Path) -> None:
    env = {**os.environ, "CLOZE_HOME": str(home), "CLOZE_PORT": "8765",
           "CLOZE_DATABASE_URL": "", "CLOZE_BROKER_URL": "", "CLOZE_STORAGE_URL": "",
           "CLOZE_RATE_LIMIT_PER_MINUTE": "0"}
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "api"], env=env,
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = "http://127.0.0.1:8765"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{url}/health", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        with httpx.Client(timeout=60) as http:
            model = http.get(f"{url}/v1/models").json()["data"][0]["id"]
            http.post(f"{url}/v1/models/{model}/load")
            p50("GET /health over HTTP", lambda: http.get(f"{url}/health"))
            p50("GET /v1/models/{id} over HTTP", lambda: http.get(f"{url}/v1/models/{model}"))
            p50("POST .../fill-mask over HTTP", lambda: http.post(
                f"{url}/v1/models/{model}/fill-mask", json={"inputs": TEXT}))
    finally:
        server.terminate()
        server.wait(30)


def in_process(export: Path) -> None:
    from transformers import pipeline

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    pipe = pipeline("fill-mask", model=str(export), device="cpu")
    served = Served(pipe, "fill-mask", get_settings())
    request = FillMaskRequest(inputs=TEXT)
    plan = make_plan(served, request)
    seqs = [Seq({"input_ids": torch.tensor(ids)}, masks)
            for ids, masks in zip(plan.ids, plan.masks, strict=True)]
    rows = served.forward(seqs)
    p50("in-process: make_plan (checks, tokenizing)", lambda: make_plan(served, request))
    p50("in-process: our forward, batch of 1, fp32 eager", lambda: served.forward(seqs))
    served.prepare(get_settings(), _warm_up_seqs(served))  # precision and graph, as served
    p50(f"in-process: our forward, batch of 1, as served ({served.dtype}, {served.graph})",
        lambda: served.forward(seqs))
    batch = seqs * 16
    p50("in-process: our forward, batch of 16, as served, per sentence",
        lambda: served.forward(batch), scale=1 / 16)
    served.close()
    pipe.model.to(torch.float32)  # prepare() may have made it bf16: fp32 for the rest
    served = Served(pipe, "fill-mask", get_settings())
    ids = torch.tensor([plan.ids[0]])
    mask = torch.ones_like(ids)
    encoder = served.model.base_model
    with torch.inference_mode():
        p50("in-process: the encoder alone, eager", lambda: encoder(input_ids=ids,
                                                                    attention_mask=mask))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(encoder, (ids, mask), strict=False, check_trace=False)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        p50("in-process: the encoder traced + frozen", lambda: frozen(ids, mask))
    p50("in-process: answer (top-5, decoding)", lambda: answer(served, plan, rows, {}, True))
    p50("in-process: the transformers pipeline, whole call", lambda: pipe(TEXT))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/sfm")
    parser.add_argument("--model", default="BERT-mini")
    args = parser.parse_args()
    work = Path(args.workdir)
    print(f"{args.model}, one sentence of {TEXT.count(' ') + 1} words, p50 of 200 calls\n")
    print("| what | ms |\n|---|---:|")
    over_http(work / f"home-{args.model}-served")
    in_process(work / args.model / "run" / "export")


if __name__ == "__main__":
    main()
