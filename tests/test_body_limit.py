"""Request bodies are limited before they are read and before the caller is authenticated:
the probe was a 200 MB JSON body with no key, which raised the API's RSS by 540 MB before its
401. Against a real uvicorn process (the point is the server's memory), keys required."""

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests import inference_helpers as helpers

JSON_LIMIT = 1024 * 1024
BIG = 200 * 1024 * 1024


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    home = tmp_path_factory.mktemp("body-limit")
    env = {"CLOZE_DATABASE_URL": "", "CLOZE_REQUIRE_API_KEYS": "true",
           "CLOZE_MAX_JSON_BODY_BYTES": str(JSON_LIMIT),
           "CLOZE_MAX_UPLOAD_BYTES": str(8 * 1024 * 1024), "CLOZE_RATE_LIMIT_PER_MINUTE": "0"}
    with helpers.api_process(home, env) as (url, proc, full_env):
        yield {"url": url, "server": psutil.Process(proc.pid), "port": int(url.rsplit(":", 1)[1]),
               "key": helpers.make_key(full_env, "alice")}


class PeakRss:
    """The server's peak RSS growth while the block runs, sampled every 20 ms."""

    def __init__(self, server: psutil.Process) -> None:
        self.server, self.growth = server, 0
        self._done = threading.Event()

    def _watch(self) -> None:
        while not self._done.is_set():
            self.growth = max(self.growth, self.server.memory_info().rss - self.before)
            time.sleep(0.02)

    def __enter__(self) -> "PeakRss":
        self.before = self.server.memory_info().rss
        self._thread = threading.Thread(target=self._watch)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        time.sleep(0.2)
        self._done.set()
        self._thread.join()


def raw_post(port: int, head: str, chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send a request by hand, stopping as soon as the server answers: (answer, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    answer = bytearray()

    def read() -> None:
        try:
            while data := sock.recv(65536):
                answer.extend(data)
        except OSError:
            pass

    reader = threading.Thread(target=read)
    reader.start()
    sent = 0
    try:
        sock.sendall(head.encode())
        for chunk in chunks:
            if answer:
                break
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:  # the server closed the connection after answering
        pass
    reader.join(timeout=60)
    sock.close()
    return bytes(answer), sent


def head(length: int | None, key: str | None = None) -> str:
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return ("POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"{auth}{framing}\r\n\r\n")


def chunked(size: int) -> Iterator[bytes]:
    chunk = b"x" * (1024 * 1024)
    for _ in range(size // len(chunk)):
        yield f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        time.sleep(0.01)  # as a client on a network would: the answer can come between
    yield b"0\r\n\r\n"


def test_declared_big_body_without_a_key_is_413_before_it_is_sent(api):
    with PeakRss(api["server"]) as rss:
        answer, sent = raw_post(api["port"], head(BIG), iter([]))  # headers only
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"payload_too_large"' in answer and b"connection: close" in answer.lower()
    print(f"\ndeclared {BIG} bytes: RSS +{rss.growth / 2**20:.1f} MiB")
    assert sent == 0 and rss.growth < 20 * 1024 * 1024, rss.growth


def test_chunked_big_body_without_a_key_is_refused_before_it_is_read(api):
    """No length to judge by, but no key either: 401 before the body (issue 22)."""
    with PeakRss(api["server"]) as rss:
        answer, sent = raw_post(api["port"], head(None), chunked(BIG))
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    print(f"\nchunked, no key: refused after {sent / 2**20:.0f} MiB")
    assert sent < 40 * 1024 * 1024 and rss.growth < 40 * 1024 * 1024, (sent, rss.growth)


def test_chunked_big_body_with_a_key_is_cut_off_at_the_limit(api):
    with PeakRss(api["server"]) as rss:
        answer, sent = raw_post(api["port"], head(None, api["key"]), chunked(BIG))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    print(f"\nchunked: refused after {sent / 2**20:.0f} MiB, RSS +{rss.growth / 2**20:.1f} MiB")
    assert sent < 40 * 1024 * 1024, sent  # it stopped reading near the 1 MiB limit
    assert rss.growth < 40 * 1024 * 1024, rss.growth


def test_declared_big_body_with_a_bad_key_is_413_not_401(api):
    r = httpx.post(f"{api['url']}/v1/jobs", content=b"{" + b" " * (JSON_LIMIT + 10) + b"}",
                   headers={"Authorization": "Bearer nope", "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_normal_requests_still_work(api, tmp_path: Path):
    auth = {"Authorization": f"Bearer {api['key']}"}
    # small bodies reach authentication and validation as before
    assert httpx.post(f"{api['url']}/v1/jobs", json={"type": "pretrain"}).status_code == 401
    r = httpx.post(f"{api['url']}/v1/jobs", json={"dataset_id": "ds_nope"}, headers=auth)
    assert r.status_code in (404, 422), r.text
    # a body just under the JSON limit is read (and found invalid), not refused
    r = httpx.post(f"{api['url']}/v1/jobs", headers={**auth, "content-type": "application/json"},
                   content=b'{"name": "' + b"x" * (JSON_LIMIT - 64) + b'"}')
    assert r.status_code == 422, r.text
    # uploads keep their own, larger limit: a 3 MiB corpus (3x the JSON limit) is stored
    corpus = b"the quick brown fox jumps over the lazy dog\n" * (3 * 1024 * 1024 // 44)
    r = httpx.post(f"{api['url']}/v1/datasets", headers=auth, timeout=60,
                   files={"file": ("corpus.txt", corpus)})
    assert r.status_code == 201, r.text
    # ... and past that limit the upload route's own 413 names the file
    r = httpx.post(f"{api['url']}/v1/datasets", headers=auth, timeout=60,
                   files={"file": ("corpus.txt", corpus * 3)})
    assert r.status_code == 413 and r.json()["error"]["param"] == "file", r.text
