"""`cloze`: run the API, a worker, migrations, or everything at once on the embedded default."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import typer
from rich.console import Console

from cloze_client.cli import datasets_app, jobs_app, models_app, sweeps_app
from service import logs
from service.settings import Settings, get_settings

if TYPE_CHECKING:
    from alembic.config import Config

app = typer.Typer(help="Cloze: pretrain, fine-tune and serve Transformer language models.",
                  no_args_is_help=True, add_completion=False)
console = Console(stderr=True)
ROOT = Path(__file__).resolve().parents[1]


def _alembic_config() -> "Config":
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    return cfg


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (alembic upgrade head)."""
    from alembic import command

    command.upgrade(_alembic_config(), "head")


@app.command()
def api(host: str | None = None, port: int | None = None) -> None:
    """Serve the HTTP API with uvicorn."""
    import uvicorn

    if host:  # the app decides from the host whether API keys are required
        os.environ["CLOZE_HOST"] = host
        get_settings.cache_clear()
    settings = get_settings()
    uvicorn.run("service.api.app:app", host=settings.host, port=port or settings.port,
                log_level="info", timeout_keep_alive=settings.keep_alive_s,
                **_proxy_options(settings))


def _proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn believes X-Forwarded-For from loopback by default, which lets any local
    caller (or a proxy that passes the header through) choose the client address the rate
    limits are keyed on: believe it only from CLOZE_TRUSTED_PROXIES."""
    if not settings.trusted_proxies:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": ",".join(settings.trusted_proxies)}


def _worker_argv(device: str, concurrency: int) -> list[str]:
    from service.routing import worker_queues

    # JSON logs (service/logs.py): no start-up banner between the JSON lines.
    quiet = ["--quiet"] if logs.json_wanted() else []
    return [sys.executable, "-m", "celery", *quiet, "-A", "workers.celery_app", "worker",
            "-Q", ",".join(worker_queues(get_settings(), device)),
            # A node name of its own: workers on one machine are counted apart (heartbeats
            # are keyed by it) and Celery sees no clash. os.execv keeps this pid.
            "-n", f"cloze-{device}-{os.getpid()}@%h", "--concurrency", str(concurrency),
            "--loglevel", "INFO", "--without-gossip", "--without-mingle"]


def _worker_env(device: str, gpu_ids: list[str] | None = None,
                gpus_per_job: int = 1) -> dict[str, str]:
    """What a worker of this device needs in its environment: a CPU worker hides every GPU
    (its jobs asked for a CPU, and the engine takes a GPU wherever torch sees one); a CUDA
    worker names its GPUs, gpus_per_job per pool process (workers/celery_app.py)."""
    from service.routing import GPU_IDS_ENV, GPUS_PER_JOB_ENV

    if device == "cpu":
        return {"CUDA_VISIBLE_DEVICES": "", GPU_IDS_ENV: ""}
    return {GPU_IDS_ENV: ",".join(gpu_ids or []), GPUS_PER_JOB_ENV: str(gpus_per_job)}


def _cuda_devices() -> list[str]:
    """The GPUs torch sees here, as CUDA_VISIBLE_DEVICES names them. Asked in this process,
    which then execs the worker: no CUDA state survives into the worker's parent (a CUDA
    context made before a fork breaks the children)."""
    import torch

    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    return names[:count] if len(names) >= count else [str(i) for i in range(count)]


@app.command()
def worker(device: str = typer.Option("cpu", help="cpu or cuda: the queue it serves "
                                      "(train.cpu or train.cuda) and where it trains"),
           gpus: int | None = typer.Option(None, min=1, help="cuda: GPUs to use, one job "
                                           "on each at once (default 1)"),
           concurrency: int | None = typer.Option(None, min=1, help="cpu: jobs at once "
                                                  "(default 1; 1 per CPU box)"),
           gpus_per_job: int = typer.Option(1, min=1, help="cuda: GPUs each job sees, for "
                                            "jobs of resources.processes up to it (one "
                                            "process per GPU); --gpus is a multiple of it"),
           ) -> None:
    """Run a Celery worker that trains jobs from its device's queue."""
    if device not in ("cpu", "cuda"):
        raise typer.BadParameter("must be cpu or cuda", param_hint="--device")
    if device == "cpu":
        if gpus is not None or gpus_per_job != 1:
            raise typer.BadParameter("a cpu worker uses no GPU; use --device cuda",
                                     param_hint="--gpus" if gpus is not None
                                     else "--gpus-per-job")
        env, jobs = _worker_env("cpu"), concurrency or 1
        if Path("/dev/nvidia0").exists():  # no torch import for a hint
            console.print("[yellow]this machine has an NVIDIA GPU; a cpu worker leaves it "
                          "unused: run `cloze worker --device cuda` for GPU jobs[/yellow]")
    else:
        if concurrency is not None:
            raise typer.BadParameter("a cuda worker runs one job per GPU; use --gpus",
                                     param_hint="--concurrency")
        found, jobs = _cuda_devices(), gpus or gpus_per_job
        if jobs % gpus_per_job:
            raise typer.BadParameter(f"--gpus ({jobs}) must be a multiple of --gpus-per-job "
                                     f"({gpus_per_job})", param_hint="--gpus")
        if not found:
            import torch

            console.print("[red]cloze worker --device cuda: torch sees no CUDA device[/red] "
                          f"(torch {torch.__version__}, built for CUDA "
                          f"{torch.version.cuda or 'none: a CPU-only build'}). Install a "
                          "CUDA build of torch and the NVIDIA driver, check "
                          "CUDA_VISIBLE_DEVICES, or run `cloze worker --device cpu`.")
            raise typer.Exit(1)
        if jobs > len(found):
            console.print(f"[red]cloze worker --device cuda --gpus {jobs}: torch sees only "
                          f"{len(found)} CUDA device(s)[/red]")
            raise typer.Exit(1)
        env = _worker_env("cuda", found[:jobs], gpus_per_job)
        jobs //= gpus_per_job  # the worker's concurrency: jobs at once
    os.environ.update(env)
    argv = _worker_argv(device, jobs)
    os.execv(argv[0], argv)


def _redact(url: str) -> str:
    """A URL without its password, fit for a terminal or a log."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


@app.command()
def up(host: str | None = None, port: int | None = None) -> None:
    """Everything on one machine: migrate, a CPU worker process, the API.

    With a GPU here, run `cloze worker --device cuda` beside it."""
    settings = get_settings()
    host, port = host or settings.host, port or settings.port
    migrate()
    worker = WorkerSupervisor(_worker_argv("cpu", 1), env=_worker_env("cpu"))
    worker.start()
    console.print(f"[bold]Cloze[/bold] data in {settings.home}")
    console.print(f"  database  {_redact(settings.database_url)}")
    console.print(f"  storage   {settings.storage_url}")
    console.print(f"  broker    {_redact(settings.broker_url)}")
    console.print(f"  worker    pid {worker.pid} (restarted if it dies)")
    os.environ["CLOZE_HOST"] = host
    get_settings.cache_clear()
    if not get_settings().api_keys_required:
        console.print("  api keys  not required: listening on loopback only "
                      "(CLOZE_REQUIRE_API_KEYS=true to require them)")
    console.print(f"[bold green]Cloze is running at http://{host}:{port}[/bold green] "
                  f"(dashboard there; API docs at http://{host}:{port}/docs)")
    try:
        api(host=host, port=port)
    finally:
        worker.stop()


class WorkerSupervisor:
    """Keeps `cloze up`'s worker running: when it dies (kill -9, OOM) its orphaned pool
    children are killed too and it is started again, after 1, 2, 4 ... up to 60 s (back to
    1 s once a worker has stayed up for a minute), so a crash loop does not spin."""

    MAX_BACKOFF_S = 60.0

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv = argv
        # The worker quits when this process dies, even by kill -9 (workers/celery_app.py).
        self.env = {**os.environ, **(env or {}), "CLOZE_SUPERVISOR_PID": str(os.getpid())}
        self._proc: subprocess.Popen[bytes] | None = None
        self._children: list[psutil.Process] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        self._proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env)
        threading.Thread(target=self._watch, name="cloze-worker-supervisor",
                         daemon=True).start()

    def _watch(self) -> None:
        backoff, started = 1.0, time.monotonic()
        while not self._stop.wait(1.0):
            proc = self._proc
            assert proc is not None
            if proc.poll() is None:
                self._remember_children(proc.pid)
                continue
            self._kill_orphans()
            if time.monotonic() - started > self.MAX_BACKOFF_S:
                backoff = 1.0
            console.print(f"[yellow]worker pid {proc.pid} exited ({proc.returncode}); "
                          f"restarting it in {backoff:.0f} s[/yellow]")
            if self._stop.wait(backoff):
                return
            with self._lock:
                if self._stop.is_set():
                    return
                self._proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env)
            console.print(f"worker restarted: pid {self._proc.pid}")
            backoff, started = min(backoff * 2, self.MAX_BACKOFF_S), time.monotonic()

    def _remember_children(self, pid: int) -> None:
        try:
            self._children = psutil.Process(pid).children(recursive=True)
        except psutil.Error:  # it exited between poll() and here: next round sees it
            pass

    def _kill_orphans(self) -> None:
        """A pool child outlives a worker killed with -9 and would keep its job (and its
        GPU) busy beside the new worker's; psutil checks it is still the same process."""
        for child in self._children:
            try:
                if child.is_running():
                    child.kill()
            except psutil.Error:
                pass
        self._children = []

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
            proc = self._proc
        if proc is None or proc.poll() is not None:
            self._kill_orphans()
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            self._kill_orphans()


keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
# The API's client commands (cloze_client speaks only HTTP: no database or settings here).
app.add_typer(datasets_app, name="datasets")
app.add_typer(jobs_app, name="jobs")
app.add_typer(models_app, name="models")
app.add_typer(sweeps_app, name="sweeps")


@keys_app.command("create")
def keys_create(owner: str = typer.Option(..., help="who owns what this key creates"),
                name: str = typer.Option("", help="a label for the key"),
                admin: bool = typer.Option(False, help="sees every owner's objects")) -> None:
    """Create a key; its secret is printed once and never stored."""
    from service.db import session_scope
    from service.domain import keys

    with session_scope() as session:
        row, secret = keys.create(session=session, owner=owner, name=name, admin=admin)
    console.print(f"created {row.id} for owner {owner!r}{' (admin)' if admin else ''}; "
                  "the secret is shown only now:")
    print(secret)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    from service.db import session_scope
    from service.domain import keys

    with session_scope() as session:
        for row in keys.list_(session=session):
            state = "revoked" if row.revoked_at else "active"
            print(f"{row.id}\t{row.owner}\t{row.prefix}...\t{'admin' if row.is_admin else ''}"
                  f"\t{state}\t{row.name}")


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (key_...)."""
    from service.db import session_scope
    from service.domain import keys

    with session_scope() as session:
        if not keys.revoke(session=session, key_id=key_id):
            console.print(f"no active key {key_id}")
            raise typer.Exit(1)
    console.print(f"revoked {key_id}")


if __name__ == "__main__":
    app()
