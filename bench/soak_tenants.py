"""Many tenants at once: does one tenant's slowness reach the others?

`cloze api` + two `cloze worker` processes on a fresh Postgres database with Redis as the
broker, API keys required, one key per tenant, a storage quota per tenant. Each tenant
(a thread) runs for --minutes: it submits a tiny pretraining job with a webhook to its own
receiver, follows it over SSE (`GET /v1/jobs/{id}/stream`) to the end, calls fill-mask on
the model its first job made, and submits the next. A third of the receivers are slow as
the audit's was (200 with `Content-Length: 100`, then one byte every 3 s); the others
answer at once. A prober asks `/health` twice a second throughout.

It prints: jobs submitted and how each ended; `/health` p50/p99/max; how long jobs waited
to start, fast and slow tenants' apart; how late each webhook arrived after its status
change, fast receivers' apart (no job may wait for another tenant's webhook); fill-mask
calls and their errors; and each tenant's stored bytes against the quota, from the
object store's files on disk.

    .venv/bin/python bench/soak_tenants.py [--tenants 16] [--minutes 10]

Postgres on 127.0.0.1:5432 (trust, user postgres) and Redis on 127.0.0.1:6379 must be up.
"""

import argparse
import gzip
import http.server
import json
import os
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
CLOZE = [sys.executable, "-m", "service.cli"]
PG_ADMIN = os.environ.get("CLOZE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("CLOZE_TEST_REDIS", "redis://127.0.0.1:6379/0")
CORPUS = ROOT / "tests" / "data" / "en-pretrain.txt.gz"
QUOTA = 64 * 1024**2  # bytes a tenant may store
TERMINAL = {"succeeded", "failed", "cancelled"}


def job_spec(tenant: int, n: int, dataset_id: str, hook: str) -> dict[str, Any]:
    return {"type": "pretrain", "objective": "mlm", "name": f"t{tenant}-job{n}",
            "dataset_id": dataset_id,
            "model": {"architecture": "bert", "size": "tiny"},
            "tokenizer": {"type": "wordpiece", "vocab_size": 1000},
            "hyperparameters": {"max_steps": 30, "batch_size": 8, "sequence_length": 64},
            "checkpoint_every": 10, "log_every": 5, "eval_every": 10,
            "webhook": {"url": hook, "secret": f"secret-of-tenant-{tenant:04d}"}}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Receiver(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """A tenant's webhook receiver: records (arrival time, body) of each delivery; a slow
    one trickles its answer as the audit's did."""

    daemon_threads = True

    def __init__(self, slow: bool) -> None:
        self.slow, self.received, self.lock = slow, [], threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with owner.lock:
                    owner.received.append((time.time(), json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                try:
                    for _ in range(100 if owner.slow else 1):
                        self.wfile.write(b"x" * (1 if owner.slow else 100))
                        self.wfile.flush()
                        if owner.slow:
                            time.sleep(3)
                except OSError:  # the sender gave up on us: as intended
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class Tenant(threading.Thread):
    def __init__(self, index: int, base: str, key: str, corpus: bytes, slow: bool,
                 until: float, drain_s: float) -> None:
        super().__init__(daemon=True)
        self.index, self.slow, self.until, self.corpus = index, slow, until, corpus
        self.give_up = until + drain_s  # a job not finished by then counts as unfinished
        self.api = httpx.Client(base_url=base, timeout=120,
                                headers={"Authorization": f"Bearer {key}"})
        self.receiver = Receiver(slow)
        self.jobs: list[dict[str, Any]] = []
        self.fill_mask = Counter[str]()
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            ds = self.api.post("/v1/datasets", files={"file": ("corpus.txt", self.corpus)})
            ds.raise_for_status()
            model_id = None
            n = 0
            while time.time() < self.until:
                r = self.api.post("/v1/jobs", json=job_spec(self.index, n, ds.json()["id"],
                                                             self.receiver.url))
                if r.status_code != 202:
                    self.errors.append(f"POST /v1/jobs {r.status_code}: {r.text[:200]}")
                    time.sleep(5)
                    continue
                job_id = r.json()["id"]
                self.follow(job_id)
                job = self.api.get(f"/v1/jobs/{job_id}").json()
                self.jobs.append(job)
                if job["status"] not in TERMINAL:
                    break  # past the drain time
                model_id = model_id or job.get("model_id")
                if model_id:
                    for _ in range(5):
                        r = self.api.post(f"/v1/models/{model_id}/fill-mask",
                                          json={"inputs": "the [MASK] of the house"})
                        self.fill_mask[str(r.status_code)] += 1
                # The model this job made, its checkpoints: freed, as a careful tenant
                # would (the first job's model is kept for fill-mask).
                if job.get("model_id") and job["model_id"] != model_id:
                    self.api.delete(f"/v1/models/{job['model_id']}")
                self.api.delete(f"/v1/jobs/{job_id}/checkpoints")
                n += 1
        except Exception as exc:  # reported, not raised: the other tenants go on
            self.errors.append(f"{exc.__class__.__name__}: {exc}")

    def follow(self, job_id: str) -> None:
        """Read the job's SSE stream until a final status (reconnecting as EventSource
        does, with Last-Event-ID)."""
        last = None
        while time.time() < self.give_up:
            headers = {"Last-Event-ID": last} if last else {}
            try:
                with self.api.stream("GET", f"/v1/jobs/{job_id}/stream", headers=headers,
                                     timeout=httpx.Timeout(60, read=60)) as r:
                    if r.status_code != 200:
                        self.errors.append(f"stream {r.status_code}")
                        time.sleep(2)
                        continue
                    event = None
                    for line in r.iter_lines():
                        if line.startswith("id:"):
                            last = line[3:].strip()
                        elif line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:") and event == "status":
                            if json.loads(line[5:])["status"] in TERMINAL:
                                return
            except httpx.HTTPError as exc:
                self.errors.append(f"stream: {exc.__class__.__name__}")
            status = self.api.get(f"/v1/jobs/{job_id}").json()["status"]
            if status in TERMINAL:
                return


def prober(base: str, stop: threading.Event, times: list[float], bad: list[str]) -> None:
    with httpx.Client(base_url=base, timeout=60) as api:
        while not stop.wait(0.5):
            t0 = time.perf_counter()
            try:
                r = api.get("/health")
                times.append(time.perf_counter() - t0)
                body = r.json()
                if r.status_code != 200 or body["workers"]["status"] not in ("ok", "unknown"):
                    bad.append(f"{time.strftime('%H:%M:%S')} {r.status_code} "
                               f"workers {body['workers'].get('status')}")
            except httpx.HTTPError as exc:
                times.append(time.perf_counter() - t0)
                bad.append(f"{exc.__class__.__name__}")


def stamp(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00")
                                                             ).timestamp()


def disk_by_owner(objects: Path, database_url: str) -> dict[str, int]:
    """Bytes on disk under the object store, by the owner of the dataset, model or job
    each top-level object folder belongs to (what the quota is meant to bound)."""
    import psycopg

    owners: dict[str, str] = {}
    with psycopg.connect(database_url) as conn:
        for table in ("datasets", "models", "jobs"):
            for object_id, owner in conn.execute(f"SELECT id, owner FROM {table}"):
                owners[object_id] = owner
    usage: dict[str, int] = defaultdict(int)
    for path in objects.rglob("*"):
        if path.is_file():
            owner = next((owners[p] for p in path.relative_to(objects).parts if p in owners),
                         "(no row)")
            usage[owner] += path.stat().st_size
    return usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--drain-minutes", type=float, default=5,
                        help="how long past --minutes a job may take to finish")
    args = parser.parse_args()

    import psycopg

    name = f"cloze_soak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    home = Path(tempfile.mkdtemp(prefix="cloze-soak-"))
    queue = f"soak-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {**os.environ, "CLOZE_HOME": str(home), "CLOZE_PORT": str(port),
           "CLOZE_DATABASE_URL": database_url, "CLOZE_BROKER_URL": REDIS,
           "CLOZE_TRAIN_QUEUE": queue, "CLOZE_STORAGE_URL": f"file://{home / 'objects'}",
           "CLOZE_REQUIRE_API_KEYS": "true", "CLOZE_STORAGE_QUOTA_BYTES": str(QUOTA),
           # the receivers are on this machine (a keyed instance refuses loopback else)
           "CLOZE_WEBHOOK_ALLOW_PRIVATE": "true", "OMP_NUM_THREADS": "1"}
    subprocess.run([*CLOZE, "migrate"], env=env, check=True, cwd=ROOT, capture_output=True)
    keys = []
    for i in range(args.tenants):
        out = subprocess.run([*CLOZE, "keys", "create", "--owner", f"tenant{i}"], env=env,
                             check=True, cwd=ROOT, capture_output=True, text=True).stdout
        keys.append(out.strip().splitlines()[-1])  # the secret, printed once
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    for proc_name, argv in [("api", ["api"])] + [(f"worker{i}", ["worker"])
                                                 for i in range(args.workers)]:
        log = open(home / f"{proc_name}.log", "ab")  # noqa: SIM115 (closed below)
        logs.append(log)
        procs.append(subprocess.Popen([*CLOZE, *argv], env=env, cwd=ROOT, stdout=log,
                                      stderr=subprocess.STDOUT))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                health = httpx.get(f"{base}/health", timeout=10).json()
                if (health["workers"].get("live") or 0) >= args.workers:
                    break  # every worker up (its heartbeat seen), not only the API
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise RuntimeError((home / "api.log").read_text()[-3000:])
            time.sleep(1)
        with gzip.open(CORPUS, "rb") as f:
            corpus = f.read(100_000)
        corpus = corpus[: corpus.rfind(b"\n") + 1]
        started = time.time()
        until = started + args.minutes * 60
        tenants = [Tenant(i, base, keys[i], corpus, slow=i % 3 == 0, until=until,
                          drain_s=args.drain_minutes * 60)
                   for i in range(args.tenants)]
        stop, health_times, health_bad = threading.Event(), [], []
        probe = threading.Thread(target=prober, args=(base, stop, health_times, health_bad),
                                 daemon=True)
        probe.start()
        for t in tenants:
            t.start()
        for t in tenants:
            t.join()
        stop.set()
        probe.join()
        wall = time.time() - started
        report(args, tenants, health_times, health_bad, wall,
               disk_by_owner(home / "objects", database_url))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            log.close()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        import redis

        redis.Redis.from_url(REDIS).delete(queue)
        if os.environ.get("KEEP"):
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def report(args: argparse.Namespace, tenants: list[Tenant], health: list[float],
           health_bad: list[str], wall: float, disk: dict[str, int]) -> None:
    print(f"\n{args.tenants} tenants ({sum(t.slow for t in tenants)} with slow webhook "
          f"receivers), {args.workers} workers, API keys required, quota {QUOTA / 2**20:.0f} "
          f"MiB each; {wall / 60:.1f} min\n")
    outcomes = Counter(j["status"] for t in tenants for j in t.jobs)
    print(f"jobs: {sum(outcomes.values())} submitted; how they ended (or where they were "
          f"{args.drain_minutes:g} min after the last submission): {dict(outcomes)}")
    for kind, group in (("fast", [t for t in tenants if not t.slow]),
                        ("slow", [t for t in tenants if t.slow])):
        waits = [stamp(j["started_at"]) - stamp(j["created_at"])  # type: ignore[operator]
                 for t in group for j in t.jobs if j.get("started_at")]
        lags = []
        for t in group:
            changed = {}
            for j in t.jobs:  # when each status was reached, as the job record says
                changed[(j["id"], "job.queued")] = stamp(j["created_at"])
                changed[(j["id"], "job.running")] = stamp(j["started_at"])
                changed[(j["id"], f"job.{j['status']}")] = stamp(j["finished_at"])
            for arrived, body in t.receiver.received:
                at = changed.get((body["id"], body["event"]))
                if at is not None:
                    lags.append(arrived - at)
        print(f"{kind} receivers' tenants: {sum(len(t.jobs) for t in group)} jobs; wait to "
              f"start p50 {percentile(waits, .5):.1f} s, max {max(waits, default=0):.1f} s; "
              f"webhook lag after the status change (running, final) p50 "
              f"{percentile(lags, .5):.2f} s, p99 {percentile(lags, .99):.2f} s, max "
              f"{max(lags, default=float('nan')):.2f} s ({len(lags)} deliveries)")
    print(f"/health: {len(health)} probes, p50 {percentile(health, .5) * 1e3:.0f} ms, p99 "
          f"{percentile(health, .99) * 1e3:.0f} ms, max {max(health, default=0) * 1e3:.0f} "
          f"ms; not ok: {len(health_bad)} {health_bad[:5]}")
    calls = sum((t.fill_mask for t in tenants), Counter[str]())
    print(f"fill-mask: {dict(calls)}")
    over = {o: b for o, b in disk.items() if b > QUOTA}
    print(f"disk by owner (MiB): max {max(disk.values(), default=0) / 2**20:.1f}, total "
          f"{sum(disk.values()) / 2**20:.1f}; over the quota: {over or 'none'}; "
          f"no row: {disk.get('(no row)', 0)} bytes")
    errors = Counter(f"tenant{t.index}: {e}" for t in tenants for e in t.errors)
    print(f"client-side errors: {sum(errors.values())} {errors.most_common(10)}")


if __name__ == "__main__":
    main()
