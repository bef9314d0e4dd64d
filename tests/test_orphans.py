"""Crash leftovers are collected (issue 22, finding 12): kill -9 of the API at 5 MB of an
8 MB upload left the partial file with no row forever, uncounted; an aborted upload left
an empty folder; a killed worker left its scratch folder (gigabytes for a real job).

Scratch folders with real processes (a locked folder is kept however old; its maker
killed, it goes); the collector against a local store and SQLite (what a row records is
kept, what none does goes once untouched for the grace period, whole token shards no row
records are counted instead); and end to end on Postgres and Redis with real API and
worker processes killed with -9, an upload slower than the grace period surviving many
collections."""

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service import orphans, scratch
from tests.inprocess import make_app
from tests.stack import ROOT, Stack

DAY = 24 * 3600.0


def eventually(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_a_scratch_folder_is_kept_while_its_maker_lives(tmp_path: Path):
    code = ("import sys, time\nfrom service.scratch import scratch_dir\n"
            f"with scratch_dir('t-', root={str(tmp_path)!r}) as p:\n"
            "    print(p, flush=True)\n    time.sleep(120)\n")
    maker = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert maker.stdout is not None
        made = Path(maker.stdout.readline().strip())
        assert made.is_dir() and made.name.startswith("cloze-t-")
        os.utime(made, (0, 0))  # old does not matter: its maker lives
        assert scratch.collect(str(tmp_path)) == [] and made.is_dir()
        maker.send_signal(signal.SIGKILL)
        maker.wait(timeout=10)
        assert made.is_dir()  # a kill -9 leaves it
        assert scratch.collect(str(tmp_path)) == [str(made)] and not made.exists()
    finally:
        maker.kill()
    # Unlocked (an earlier release's): only once untouched for a day.
    old, fresh, other = (tmp_path / n for n in ("cloze-old", "cloze-fresh", "not-ours"))
    for folder in (old, fresh, other):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "f").write_bytes(b"x")
    for path in (old, old / "sub", old / "sub" / "f", other):
        os.utime(path, (time.time() - DAY - 60,) * 2)
    assert scratch.collect(str(tmp_path)) == [str(old)]
    assert fresh.is_dir() and other.is_dir()
    # A folder in use by this process is kept too; gone when done.
    with scratch.scratch_dir("mine-", root=str(tmp_path)) as mine:
        assert scratch.collect(str(tmp_path)) == [] and mine.is_dir()
    assert not mine.exists()


def _put(root: Path, key: str, data: bytes = b"x", age: float = 0.0) -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if age:
        for p in (path, path.parent):
            os.utime(p, (time.time() - age,) * 2)


def test_the_collector_keeps_what_rows_record_and_what_is_fresh(tmp_path, monkeypatch):
    from service.db import session_scope
    from service.domain.tables import CheckpointRow, DatasetRow, JobRow, TokenizedRow
    from service.storage import get_store

    with make_app(tmp_path, monkeypatch):
        store, objects = get_store(), tmp_path / "objects"
        with session_scope() as s:
            s.add(DatasetRow(id="ds_1", name="d", format="txt", bytes=1, sha256="0" * 64,
                             documents=1, storage_key="datasets/ds_1/corpus.txt"))
            s.add(JobRow(id="job_1", type="pretrain", name="j", status="succeeded", spec={},
                         dataset_id="ds_1"))
            s.flush()
            s.add(CheckpointRow(id="ckpt_1", job_id="job_1", step=5, bytes=1, sha256="0" * 64,
                                storage_prefix="jobs/job_1/checkpoints/step-00000005",
                                metrics={}))
        old = 2 * 3600.0
        kept = ["datasets/ds_1/corpus.txt", "jobs/job_1/checkpoints/step-00000005/m.json",
                "datasets/ds_new/corpus.txt",  # an upload in progress: fresh
                "tokenized/ds_1/whole/meta.json", "unknown/x"]
        gone = ["datasets/ds_gone/corpus.txt", "models/m_gone/files/config.json",
                "jobs/job_gone/checkpoints/step-00000001/m.json",
                "jobs/job_1/checkpoints/step-00000007/m.json",  # torn upload, no row
                "tokenized/ds_1/torn/train-00000.npy", "tokenized/ds_gone/k/meta.json"]
        for key in kept:
            _put(objects, key, b"1234", age=0 if "new" in key else old)
        for key in gone:
            _put(objects, key, age=old)
        (objects / "datasets" / "ds_empty").mkdir()  # an aborted upload's folder
        os.utime(objects / "datasets" / "ds_empty", (time.time() - old,) * 2)
        removed = orphans.collect(store, grace_s=3600, scratch_root=str(tmp_path / "none"))
        assert sorted(removed) == sorted(["datasets/ds_empty", "datasets/ds_gone",
                                          "models/m_gone", "jobs/job_gone",
                                          "jobs/job_1/checkpoints/step-00000007",
                                          "tokenized/ds_1/torn", "tokenized/ds_gone"])
        left = {p.relative_to(objects).as_posix() for p in objects.rglob("*") if p.is_file()}
        assert left == set(kept)
        with session_scope() as s:  # whole shards no row counted: counted now
            assert s.get(TokenizedRow, "tokenized/ds_1/whole").bytes == 4
        assert orphans.collect(store, grace_s=3600, scratch_root=str(tmp_path / "none")) == []


class Body:
    """A multipart upload streamed in chunks, paced by the test."""

    BOUNDARY = "cloze-test-boundary"

    def __init__(self, chunks: int, size: int = 64 * 1024, pause: float = 0.0,
                 stop_after: int | None = None) -> None:
        self.chunks, self.size, self.pause, self.stop_after = chunks, size, pause, stop_after
        self.digest = hashlib.sha256()
        self.release = threading.Event()

    def headers(self) -> dict[str, str]:
        return {"content-type": f"multipart/form-data; boundary={self.BOUNDARY}"}

    def __iter__(self) -> Iterator[bytes]:
        yield (f"--{self.BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
               f"filename=\"big.txt\"\r\nContent-Type: text/plain\r\n\r\n").encode()
        line = b"a line of an ordinary corpus for the upload test\n"
        chunk = (line * (self.size // len(line) + 1))[:self.size - 1] + b"\n"
        for i in range(self.chunks):
            if i == self.stop_after:
                self.release.wait(60)  # until the API is killed
            self.digest.update(chunk)
            yield chunk
            time.sleep(self.pause)
        yield f"\r\n--{self.BOUNDARY}--\r\n".encode()


def _partial(objects: Path) -> list[Path]:
    return [p for p in (objects / "datasets").glob("*/corpus.txt")]


@pytest.fixture
def stack(tmp_path: Path, fresh_postgres: str, redis_url: str) -> Iterator[Stack]:
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    server = Stack(home, {
        "CLOZE_DATABASE_URL": fresh_postgres, "CLOZE_BROKER_URL": redis_url,
        "CLOZE_TRAIN_QUEUE": f"orphans-{uuid.uuid4().hex[:8]}",
        "CLOZE_STORAGE_URL": f"file://{home / 'objects'}",
        # Its own temporary directory: the collector never sees other tests' folders.
        "TMPDIR": str(home / "tmp"),
        "CLOZE_ORPHAN_GRACE_S": "3", "CLOZE_ORPHAN_INTERVAL_S": "0.5",
        "CLOZE_REAPER_INTERVAL_S": "0.5", "CLOZE_RATE_LIMIT_PER_MINUTE": "0"},
        embedded=False)
    try:
        yield server
    finally:
        server.stop()


def test_crash_leftovers_are_collected_and_uploads_in_progress_are_not(stack: Stack):
    objects, tmp = stack.home / "objects", stack.home / "tmp"
    # An upload slower than the grace period (64 KB every 0.3 s for ~9 s) while the
    # collectors run every 0.5 s: never taken for a leftover.
    slow = Body(chunks=30, pause=0.3)
    r = stack.client.post("/v1/datasets", content=slow, headers=slow.headers())
    assert r.status_code == 201, r.text
    assert r.json()["sha256"] == slow.digest.hexdigest()
    slow_id = r.json()["id"]

    # An aborted upload (not UTF-8) leaves no folder behind.
    before = set((objects / "datasets").iterdir())
    r = stack.client.post("/v1/datasets", files={"file": ("bad.txt", b"\xff\xfe\x00" * 5000)})
    assert 400 <= r.status_code < 500, r.text
    assert set((objects / "datasets").iterdir()) == before

    # kill -9 of the API in the middle of an upload: the partial file stays, with no row;
    # the API started again (and the worker's reaper) collect it once past the grace.
    cut = Body(chunks=128, stop_after=80)  # 8 MB, stopped at 5 MB
    client = httpx.Client(base_url=stack.url, timeout=60)
    sender = threading.Thread(target=lambda: _ignore(lambda: client.post(
        "/v1/datasets", content=cut, headers=cut.headers())))
    sender.start()
    eventually(lambda: any(p.stat().st_size >= 4_000_000 for p in _partial(objects)
                           if slow_id not in str(p)), "the upload to reach 4 MB")
    partial = next(p for p in _partial(objects) if slow_id not in str(p))
    stack.kill("api")
    cut.release.set()
    sender.join(timeout=30)
    assert partial.exists()
    stack._spawn("api", ["api"])
    stack._wait_healthy()
    eventually(lambda: not partial.parent.exists(), "the partial upload to be collected")
    assert (objects / "datasets" / slow_id / "corpus.txt").exists()  # its row keeps it

    # A worker killed mid-job leaves its scratch folder; a collector removes it (its
    # lock is free), while the folder of a live process stays.
    job = stack.client.post("/v1/jobs", json={
        "dataset_id": slow_id, "model": {"size": "tiny"}, "tokenizer": {"vocab_size": 500},
        "hyperparameters": {"max_steps": 100_000, "batch_size": 4, "sequence_length": 32,
                            "warmup_steps": 1}}).json()
    stack.wait_until(job["id"], lambda j: j["progress"]["step"] > 0, "a step", timeout=120)
    work = [p for p in tmp.glob(f"cloze-{job['id']}-*")]
    assert len(work) == 1 and work[0].is_dir(), list(tmp.iterdir())
    time.sleep(2)  # a few collections: a live worker's folder stays
    assert work[0].is_dir()
    stack.kill("worker")
    eventually(lambda: not work[0].exists(), "the dead worker's scratch folder to go")
    stack.client.post(f"/v1/jobs/{job['id']}/cancel")


def _ignore(call: Callable[[], object]) -> None:
    try:
        call()
    except httpx.HTTPError:  # the API was killed under it
        pass


def test_what_the_collector_reads_of_s3(tmp_path, monkeypatch):
    """children, last_modified and bytes_under on S3 (moto's server on loopback), as on a
    local directory: S3 has no folders, only keys and their LastModified."""
    from moto.server import ThreadedMotoServer

    from service.storage import ObjectStore
    from tests.stack import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        import boto3

        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket="cloze")
        for url in (f"s3://cloze/{uuid.uuid4().hex}", f"file://{tmp_path / 'objects'}"):
            store = ObjectStore(url, endpoint)
            before = time.time() - 5
            for key, data in (("datasets/ds_a/corpus.txt", b"abc"),
                              ("datasets/ds_b/corpus.txt", b"de"), ("models/m_a/x/y", b"f")):
                with store.open_write(key) as f:
                    f.write(data)
            assert store.children("datasets") == ["ds_a", "ds_b"], url
            assert store.children("nothing") == []
            assert store.bytes_under("datasets") == 5 and store.bytes_under("nothing") == 0
            changed = store.last_modified("models/m_a")
            assert changed is not None and before < changed < time.time() + 5, url
            assert store.last_modified("nothing") is None
    finally:
        server.stop()
