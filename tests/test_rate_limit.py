"""Rate limits an attacker cannot step around: a made-up X-Forwarded-For is not a new
caller unless it comes from a configured proxy, the limiter's memory is bounded, guessing
keys is limited by address, and the limit is shared by every API process through Redis."""

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.api.auth import RateLimiter, RedisRateLimiter
from tests.inprocess import REMOTE, client, make_app
from tests.stack import CLOZE, ROOT, free_port


def _serve(tmp_path: Path, argv: list[str], port: int, **env: str) -> subprocess.Popen[bytes]:
    full = {**os.environ, "CLOZE_HOME": str(tmp_path), "CLOZE_PORT": str(port),
            "CLOZE_RATE_LIMIT_PER_MINUTE": "5", "PYTHONUNBUFFERED": "1", **env}
    for name in ("CLOZE_DATABASE_URL", "CLOZE_BROKER_URL", "CLOZE_STORAGE_URL",
                 "CLOZE_TRUSTED_PROXIES", "FORWARDED_ALLOW_IPS"):
        full.pop(name, None) if name not in env else None
    subprocess.run([*CLOZE, "migrate"], env=full, cwd=ROOT, check=True, capture_output=True)
    log = open(tmp_path / f"api-{port}.log", "wb")  # noqa: SIM115 (lives with the process)
    proc = subprocess.Popen(argv, env=full, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
            return proc
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError((tmp_path / f"api-{port}.log").read_text()) from None
            time.sleep(0.5)


@pytest.fixture(params=["cloze api", "plain uvicorn"])
def server(request, tmp_path) -> Iterator[str]:
    """The API as `cloze api` runs it, and as plain `uvicorn` (which by default believes
    X-Forwarded-For from loopback) runs it."""
    port = free_port()
    argv = [*CLOZE, "api"] if request.param == "cloze api" else [
        sys.executable, "-m", "uvicorn", "service.api.app:app", "--port", str(port)]
    # keys off, as in the probe: a forwarded request would otherwise need a key
    proc = _serve(tmp_path, argv, port, CLOZE_REQUIRE_API_KEYS="false")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def test_rotating_x_forwarded_for_does_not_reset_the_limit(server):
    codes = [httpx.get(f"{server}/v1/jobs", timeout=30,
                       headers={"X-Forwarded-For": f"10.{i // 256}.{i % 256}.1"}).status_code
             for i in range(12)]
    # was all 200: every made-up address had a bucket of its own
    assert codes[:5] == [200] * 5 and set(codes[5:]) == {429}, codes


def test_a_trusted_proxy_names_the_client(tmp_path):
    port = free_port()
    proc = _serve(tmp_path, [*CLOZE, "api"], port, CLOZE_TRUSTED_PROXIES='["127.0.0.1"]',
                  CLOZE_REQUIRE_API_KEYS="false")
    try:
        def get(client_ip: str) -> int:
            return httpx.get(f"http://127.0.0.1:{port}/v1/jobs", timeout=30,
                             headers={"X-Forwarded-For": client_ip}).status_code

        assert [get("198.51.100.1") for _ in range(6)] == [200] * 5 + [429]
        assert get("198.51.100.2") == 200  # another client behind the proxy: its own bucket
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_bucket_map_is_bounded():
    limiter = RateLimiter(per_minute=60, max_callers=1000)
    for i in range(200_000):  # was: one bucket per caller, kept forever
        limiter.retry_after(f"ip:10.0.{i // 256}.{i % 256}-{i}")
    assert len(limiter) <= 1000
    # the bound does not forgive a caller that keeps calling
    for _ in range(60):
        limiter.retry_after("busy")
    assert limiter.retry_after("busy") >= 1


def test_idle_buckets_are_dropped():
    limiter = RateLimiter(per_minute=6000)  # refills in 60 s at 100/s
    limiter.retry_after("a")
    limiter._buckets["a"] = (0.0, time.monotonic() - 61)  # idle for a full refill
    limiter.retry_after("b")
    assert "a" not in limiter._buckets and len(limiter) == 1


def test_invalid_keys_are_rate_limited_by_address(tmp_path, monkeypatch):
    with make_app(tmp_path, monkeypatch, CLOZE_REQUIRE_API_KEYS="true",
                  CLOZE_RATE_LIMIT_PER_MINUTE="5") as app:
        guesser = client(app, peer=REMOTE, server="http://192.0.2.10:8000")
        codes = [guesser.get("/v1/jobs", headers={"Authorization": f"Bearer cloze_sk_{i}"})
                 for i in range(8)]
        # was 401 forever: a key could be guessed at full speed
        assert [r.status_code for r in codes] == [401] * 5 + [429] * 3
        assert int(codes[-1].headers["Retry-After"]) >= 1
        # no key at all, and other schemes, share the address's bucket
        assert guesser.get("/v1/jobs").status_code == 429
        assert guesser.get("/v1/jobs", headers={"Authorization": "Basic eDp5"}).status_code == 429
        # another address is not punished for it
        other = client(app, peer=("198.51.100.9", 1), server="http://192.0.2.10:8000")
        assert other.get("/v1/jobs").status_code == 401


def test_limits_are_shared_through_redis(redis_url):
    """Two API processes on one Redis broker share one budget per caller (was: each
    process its own, so N processes allowed N times the limit)."""
    namespace = f"cloze:test-{uuid.uuid4().hex[:8]}:ratelimit"
    code = (
        "import sys\n"
        "from service.api.auth import RateLimiter, RedisRateLimiter\n"
        f"l = RedisRateLimiter({redis_url!r}, 10, {namespace!r}, RateLimiter(10))\n"
        "print(sum(l.retry_after('ip:203.0.113.7') == 0 for _ in range(10)))\n")
    counts: list[int] = []

    def process() -> None:
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                             text=True, check=True)
        counts.append(int(out.stdout.strip()))

    threads = [threading.Thread(target=process) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 10, counts  # 10 per minute in all, not 10 per process


def test_redis_limiter_refills_and_reports_the_wait(redis_url):
    limiter = RedisRateLimiter(redis_url, 60, f"cloze:test-{uuid.uuid4().hex[:8]}:rl",
                               RateLimiter(60))
    assert all(limiter.retry_after("k") == 0 for _ in range(60))
    assert limiter.retry_after("k") == 1  # one more token a second
    time.sleep(1.1)
    assert limiter.retry_after("k") == 0


def test_redis_down_falls_back_to_the_process_limit_quickly():
    port = free_port()  # nothing listens here
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{port}/0", 3, "cloze:x:rl", RateLimiter(3))
    t0 = time.monotonic()
    assert [limiter.retry_after("k") for _ in range(4)][:3] == [0, 0, 0]
    assert limiter.retry_after("k") >= 1
    assert time.monotonic() - t0 < 3


def test_redis_broker_selects_the_shared_limiter(tmp_path, monkeypatch, redis_url):
    from service.api.auth import limiter
    from service.settings import Settings

    assert isinstance(limiter(Settings(home=tmp_path, broker_url=redis_url)), RedisRateLimiter)
    assert isinstance(limiter(Settings(home=tmp_path)), RateLimiter)
