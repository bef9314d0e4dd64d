"""API latency with an empty queue and with 1,000 queued jobs (no worker takes them).

`cloze api` on a fresh Postgres database with Redis as the broker (a queue of its own that
nothing consumes), one client in a loop, keep-alive. For each case it measures p50/p99 of
`GET /v1/jobs?limit=20`, `GET /v1/jobs/{id}`, `POST /v1/jobs` (each new job is cancelled
right after, outside the timing, so the queue keeps its size) and `GET /health` (which
counts the waiting jobs and the live workers), then prints both cases side by side with
the ratio of the p50s. The 1,000 jobs are inserted directly in bulk (one INSERT), as
copies of a job the API made, so they are what submissions would have left.

    .venv/bin/python bench/api_queued_jobs.py [--queued 1000] [--requests 200]

The goal: every p50 with 1,000 queued jobs within 3x of the empty case. Postgres on
127.0.0.1:5432 (trust, user postgres) and Redis on 127.0.0.1:6379 must be up.
"""

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CLOZE = [sys.executable, "-m", "service.cli"]
PG_ADMIN = os.environ.get("CLOZE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("CLOZE_TEST_REDIS", "redis://127.0.0.1:6379/0")
CORPUS = ROOT / "tests" / "data" / "en-pretrain.txt.gz"
JOB = {"type": "pretrain", "objective": "mlm", "name": "bench",
       "model": {"architecture": "bert", "size": "tiny"},
       "tokenizer": {"type": "wordpiece", "vocab_size": 2000},
       "hyperparameters": {"max_steps": 100, "batch_size": 8, "sequence_length": 64}}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(n: int, call: Callable[[], httpx.Response], after: Callable[[httpx.Response], None]
          | None = None, warmup: int = 10) -> list[float]:
    """n timings (seconds) of call(), after `warmup` untimed ones; `after` runs untimed."""
    times = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        r = call()
        elapsed = time.perf_counter() - t0
        if r.status_code >= 300:
            raise RuntimeError(f"{r.request.method} {r.request.url}: {r.status_code} {r.text}")
        if after is not None:
            after(r)
        if i >= warmup:
            times.append(elapsed)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(api: httpx.Client, job_id: str, n: int) -> dict[str, list[float]]:
    def cancel(r: httpx.Response) -> None:
        api.post(f"/v1/jobs/{r.json()['id']}/cancel").raise_for_status()

    return {
        "GET /v1/jobs?limit=20": timed(n, lambda: api.get("/v1/jobs", params={"limit": 20})),
        "GET /v1/jobs/{id}": timed(n, lambda: api.get(f"/v1/jobs/{job_id}")),
        "POST /v1/jobs": timed(max(n // 2, 20), lambda: api.post("/v1/jobs", json=JOB),
                               after=cancel),
        "GET /health": timed(n, lambda: api.get("/health")),
    }


def bulk_queue(database_url: str, template_id: str, count: int, stale: bool) -> None:
    """`count` queued copies of the template job in one INSERT ... SELECT, created and
    enqueued now as fresh submissions (the reaper re-sends none of them meanwhile) or, with
    `stale`, enqueued an hour ago: jobs that waited past requeue_after_s, which the reaper's
    next round (within reaper_interval_s) re-sends while the timings run."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("""
            INSERT INTO jobs (id, owner, type, name, status, spec, dataset_id, created_at,
                              enqueued_at, attempts, cancel_requested, step, total_steps,
                              tokens_seen, estimated_seconds)
            SELECT 'job_bulk' || lpad(g::text, 8, '0'), owner, type, name, 'queued', spec,
                   dataset_id, now() - (g || ' milliseconds')::interval,
                   now() - %s::interval, 0, false, 0, total_steps, 0, estimated_seconds
            FROM jobs, generate_series(1, %s) AS g WHERE jobs.id = %s""",
                     ("1 hour" if stale else "0 seconds", count, template_id))
        conn.execute("ANALYZE jobs")


def report(empty: dict[str, list[float]], full: dict[str, list[float]], queued: int) -> None:
    head = (f"{'route':<24}{'p50 empty':>11}{'p99 empty':>11}{f'p50 {queued:,}':>12}"
            f"{f'p99 {queued:,}':>12}{'p50 ratio':>11}")
    print(head)
    print("-" * len(head))
    worst = 0.0
    for route in empty:
        p50e, p99e = percentile(empty[route], .5), percentile(empty[route], .99)
        p50f, p99f = percentile(full[route], .5), percentile(full[route], .99)
        ratio = p50f / p50e
        worst = max(worst, ratio)
        print(f"{route:<24}{p50e * 1e3:>9.1f}ms{p99e * 1e3:>9.1f}ms{p50f * 1e3:>10.1f}ms"
              f"{p99f * 1e3:>10.1f}ms{ratio:>10.2f}x")
    print(f"\nworst p50 ratio {worst:.2f}x (goal: within 3x): "
          f"{'met' if worst <= 3 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queued", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per GET")
    parser.add_argument("--stale", action="store_true", help="the queued jobs waited past "
                        "requeue_after_s: the reaper re-sends them during the timings")
    args = parser.parse_args()

    import psycopg

    name = f"cloze_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    home = Path(tempfile.mkdtemp(prefix="cloze-bench-"))
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {**os.environ, "CLOZE_HOME": str(home), "CLOZE_PORT": str(port),
           "CLOZE_DATABASE_URL": database_url, "CLOZE_BROKER_URL": REDIS,
           "CLOZE_TRAIN_QUEUE": queue,  # nobody consumes it
           "CLOZE_STORAGE_URL": f"file://{home / 'objects'}",
           "CLOZE_MAX_ACTIVE_JOBS": str(args.queued * 10), "CLOZE_RATE_LIMIT_PER_MINUTE": "0"}
    subprocess.run([*CLOZE, "migrate"], env=env, check=True, cwd=ROOT, capture_output=True)
    log = open(home / "api.log", "ab")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([*CLOZE, "api"], env=env, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        deadline = time.monotonic() + 120
        while True:
            try:
                if api.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((home / "api.log").read_text()[-3000:])
            time.sleep(0.5)
        with gzip.open(CORPUS, "rb") as f:
            corpus = f.read(200_000)
        corpus = corpus[: corpus.rfind(b"\n") + 1]
        ds = api.post("/v1/datasets", files={"file": ("corpus.txt", corpus)})
        ds.raise_for_status()
        JOB["dataset_id"] = ds.json()["id"]
        first = api.post("/v1/jobs", json=JOB)
        first.raise_for_status()
        job_id = first.json()["id"]
        api.post(f"/v1/jobs/{job_id}/cancel").raise_for_status()  # the queue: empty

        empty = measure(api, job_id, args.requests)
        bulk_queue(database_url, job_id, args.queued, args.stale)
        waiting = api.get("/health").json()["workers"]["waiting_jobs"]
        assert waiting == args.queued, waiting
        full = measure(api, job_id, args.requests)
        print(f"`cloze api` on Postgres, no worker; one client, sequential; "
              f"{args.requests} timed requests per GET ({max(args.requests // 2, 20)} POSTs)\n")
        report(empty, full, args.queued)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        import redis

        redis.Redis.from_url(REDIS).delete(queue)  # the messages nobody took
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
