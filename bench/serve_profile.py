"""Where a fill-mask request's time goes: the HTTP stack, the model pass, the rest.

Uses a server home and an export that `bench/serve_fill_mask.py --workdir W` left behind:

    .venv/bin/python bench/serve_profile.py --workdir /tmp/sfm

Prints p50 over 200 calls of: GET /health and GET /v1/models/{id} over HTTP (the stack
without a model), POST fill-mask with a malformed body over HTTP (routing, middlewares, body
parsing and validation, the error's encoding: no lookup, no model), POST fill-mask over HTTP,
then in-process: the body's validation, checking and tokenizing (make_plan), our batched
forward for one sentence, the same through the model's Batcher (its queue and thread hop),
its encoder alone (eager and traced + frozen with torch.jit), building the answer, encoding
it as the response's JSON, and the transformers pipeline's whole call. `--short` profiles a
short sentence (7 tokens with [CLS] and [SEP]) instead of the 12-word one. The server runs
with the per-minute budget off (CLOZE_RATE_LIMIT_PER_MINUTE=0) only so that the GET rows,
which it budgets, are not answered 429; fill-mask is not held to it by default.
Run it alone on the machine.
"""

import argparse
import json
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
SHORT = "the [MASK] is strong."


def p50(name: str, call: Callable[[], Any], n: int = 200, scale: float = 1.0) -> None:
    for _ in range(10):
        call()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    print(f"| {name} | {1000 * scale * statistics.median(times):.3f} |")


def over_http(home: Path, text: str) -> None:
    import socket

    with socket.socket() as sock:  # a free port: others may serve on the machine
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "CLOZE_HOME": str(home), "CLOZE_PORT": str(port),
           "CLOZE_DATABASE_URL": "", "CLOZE_BROKER_URL": "", "CLOZE_STORAGE_URL": "",
           "CLOZE_RATE_LIMIT_PER_MINUTE": "0"}
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "api"], env=env,
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{url}/health", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        with httpx.Client(timeout=60) as http:
            model = http.get(f"{url}/v1/models").json()["data"][0]["id"]
            http.post(f"{url}/v1/models/{model}/load", timeout=600).raise_for_status()
            p50("GET /health over HTTP", lambda: http.get(f"{url}/health"))
            p50("GET /v1/models/{id} over HTTP", lambda: http.get(f"{url}/v1/models/{model}"))
            p50("POST .../fill-mask, malformed body (422) over HTTP", lambda: http.post(
                f"{url}/v1/models/{model}/fill-mask", json={"inputs": 5}))
            p50("POST .../fill-mask over HTTP", lambda: http.post(
                f"{url}/v1/models/{model}/fill-mask", json={"inputs": text}))
    finally:
        server.terminate()
        server.wait(30)


def in_process(export: Path, text: str) -> None:
    from fastapi.encoders import jsonable_encoder
    from fastapi.responses import JSONResponse
    from transformers import pipeline

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    pipe = pipeline("fill-mask", model=str(export), device="cpu")
    served = Served(pipe, "fill-mask", get_settings())
    request = FillMaskRequest(inputs=text)
    raw = json.dumps({"inputs": text})
    plan = make_plan(served, request)
    seqs = [Seq({"input_ids": torch.tensor(ids)}, masks)
            for ids, masks in zip(plan.ids, plan.masks, strict=True)]
    rows = served.forward(seqs)
    p50("in-process: the body's validation (pydantic, from JSON)",
        lambda: FillMaskRequest.model_validate_json(raw))
    p50("in-process: make_plan (checks, tokenizing)", lambda: make_plan(served, request))
    p50("in-process: our forward, batch of 1, fp32 eager", lambda: served.forward(seqs))
    served.prepare(get_settings(), _warm_up_seqs(served))  # precision and graph, as served
    p50(f"in-process: our forward, batch of 1, as served ({served.dtype}, {served.graph})",
        lambda: served.forward(seqs))
    assert served.batcher is not None
    batcher = served.batcher
    p50("in-process: the same through the Batcher (queue, thread hop, future)",
        lambda: [f.result() for f in batcher.submit(seqs)])
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
    out = answer(served, plan, rows, {}, True)
    p50("in-process: the response's JSON (jsonable_encoder + JSONResponse)",
        lambda: JSONResponse(jsonable_encoder(out)).body)
    p50("in-process: the transformers pipeline, whole call", lambda: pipe(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/sfm")
    parser.add_argument("--model", default="BERT-mini")
    parser.add_argument("--short", action="store_true", help=f"profile {SHORT!r}")
    parser.add_argument("--export", type=Path, help="the export (default: WORKDIR/MODEL/run/"
                        "export; a --quick run of serve_fill_mask.py leaves WORKDIR/MODEL-40)")
    args = parser.parse_args()
    work = Path(args.workdir)
    text = SHORT if args.short else TEXT
    print(f"{args.model}, one sentence of {text.count(' ') + 1} words, p50 of 200 calls\n")
    print("| what | ms |\n|---|---:|")
    over_http(work / f"home-{args.model}-served", text)
    in_process(args.export or work / args.model / "run" / "export", text)


if __name__ == "__main__":
    main()
