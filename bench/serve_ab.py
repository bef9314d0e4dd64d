"""Fill-mask latency of two checkouts of Cloze, side by side: each checkout's `cloze api`
runs at once on the same model, and single requests alternate between them, so whatever
else the machine does falls on both alike (running one server after the other, as
serve_fill_mask.py does, moved one client's p50 by 1-2 ms between runs of the same code).

    python bench/serve_fill_mask.py --models BERT-mini --workdir /tmp/sfm   # makes the model
    python bench/serve_ab.py --before /tmp/old-checkout --after . --model /tmp/sfm/BERT-mini
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import serve_fill_mask as sfm  # it puts the checkout on sys.path


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--before", required=True, help="a checkout (its ../shared not needed)")
    parser.add_argument("--after", default=str(sfm.ROOT), help="another (default: this one)")
    parser.add_argument("--model", required=True, type=Path, help="an export directory")
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds after a warm one")
    args = parser.parse_args()
    texts = sfm.sentences(args.sentences)
    servers = {}
    with tempfile.TemporaryDirectory(prefix="cloze-serve-ab-") as tmp:
        try:
            for name, root in (("before", args.before), ("after", args.after)):
                sfm.ROOT = Path(root).resolve()  # Server starts `cloze api` from ROOT
                home = Path(tmp) / name
                home.mkdir()
                server = sfm.Server(home, {})
                model_id = server.import_model(args.model, "ab")
                httpx.post(f"{server.url}/v1/models/{model_id}/load", timeout=300)
                servers[name] = (server, model_id, httpx.Client(timeout=30))
            latencies: dict[str, list[float]] = {name: [] for name in servers}
            for round_ in range(args.rounds + 1):
                for i, text in enumerate(texts):
                    for name in (("before", "after") if i % 2 else ("after", "before")):
                        server, model_id, client = servers[name]
                        t0 = time.perf_counter()
                        client.post(f"{server.url}/v1/models/{model_id}/fill-mask",
                                    json={"inputs": text}).raise_for_status()
                        if round_:  # the first round warms both
                            latencies[name].append((time.perf_counter() - t0) * 1000)
            for name, xs in latencies.items():
                xs.sort()
                print(f"{name:7s} p50 {xs[len(xs) // 2]:.2f} ms  p90 {xs[int(len(xs) * .9)]:.2f}"
                      f"  mean {statistics.mean(xs):.2f}  requests {len(xs)}")
        finally:
            for server, _, _ in servers.values():
                server.stop()


if __name__ == "__main__":
    main()
