"""Starts the real service processes (API, Celery worker) for end-to-end tests."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
# Slices of real text the tests carry (tests/data/README.md: sources and licences).
DATA = ROOT / "tests" / "data"
CLOZE = [sys.executable, "-m", "service.cli"]
TERMINAL = {"succeeded", "failed", "cancelled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """A running Cloze: either `cloze up` (embedded) or `cloze api` + `cloze worker`."""

    def __init__(self, home: Path, env: dict[str, str], *, embedded: bool) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # fp32 serving: the tests hold answers to the (fp32) pipeline's within 1e-5, and
        # "auto" serves bf16 on a CPU with native bf16 (tests/test_batched_inference.py
        # covers that choice).
        self.env = {**os.environ, "CLOZE_HOME": str(home), "CLOZE_PORT": str(self.port),
                    "PYTHONUNBUFFERED": "1", "CLOZE_INFERENCE_PRECISION": "fp32", **env}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        home.mkdir(parents=True, exist_ok=True)
        if embedded:
            self._spawn("up", ["up"])
        else:
            subprocess.run([*CLOZE, "migrate"], env=self.env, check=True, cwd=ROOT)
            self._spawn("worker", ["worker"])
            self._spawn("api", ["api"])
        self.client = httpx.Client(base_url=self.url, timeout=120)
        self._wait_healthy()

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        # A session of its own, so a test can kill -9 the process with all its children.
        self.procs[name] = subprocess.Popen([*CLOZE, *args], env=self.env, cwd=ROOT,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def kill(self, name: str) -> None:
        """kill -9 a process and its children (a Celery worker and its pool), as a crash."""
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def start_worker(self, name: str = "worker", *args: str) -> None:
        """Start `cloze worker` (more of them under other names; args: its options)."""
        self._spawn(name, ["worker", *args])

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-6000:]}"
                         for p in sorted(self.home.glob("*.log")))

    def _wait_healthy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited early\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the service did not become healthy\n{self.logs()}")

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def upload(self, path: Path | str, content: bytes | None = None,
               name: str | None = None) -> httpx.Response:
        filename = Path(path).name
        body = content if content is not None else Path(path).read_bytes()
        data = {"name": name} if name else None
        return self.client.post("/v1/datasets", files={"file": (filename, body)}, data=data)

    def download(self, model_id: str, dest: Path) -> Path:
        """The model's export (GET /download) extracted under dest: dest/<model id>."""
        import io
        import tarfile

        r = self.client.get(f"/v1/models/{model_id}/download")
        assert r.status_code == 200, r.text
        with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
            tar.extractall(dest, filter="data")
        return dest / model_id

    def wait_job(self, job_id: str, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in TERMINAL:
                return job
            time.sleep(1)
        raise AssertionError(f"job {job_id} did not finish in {timeout}s\n{self.logs()}")

    def wait_until(self, job_id: str, predicate: Callable[[dict], bool], what: str,
                   timeout: float = 300) -> dict:
        """The job once `predicate` holds for it, polled every 50 ms; fails at once if the
        job ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.client.get(f"/v1/jobs/{job_id}").json()
            if predicate(job):
                return job
            assert job["status"] not in TERMINAL, (f"ended before {what}", job, self.logs())
            time.sleep(0.05)
        raise AssertionError(f"job {job_id}: no {what} in {timeout}s\n{self.logs()}")

    def stop(self) -> None:
        self.client.close()
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def corpus_slice(path: Path, size: int) -> bytes:
    """The first `size` bytes of a corpus, cut at a line end (gz files are decompressed)."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read(size)
    return data[: data.rfind(b"\n") + 1]
