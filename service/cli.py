"""`cloze`: run the API, a worker, migrations, or everything at once on the embedded default."""

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from service.settings import get_settings

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
                log_level="info")


def _worker_argv(concurrency: int) -> list[str]:
    settings = get_settings()
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
            "-Q", settings.train_queue, "--concurrency", str(concurrency),
            "--loglevel", "INFO", "--without-gossip", "--without-mingle"]


@app.command()
def worker(concurrency: int = typer.Option(1, help="jobs at once; 1 per CPU box or GPU")) -> None:
    """Run a Celery worker that trains jobs from the queue."""
    argv = _worker_argv(concurrency)
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
    """Everything on one machine: migrate, start a worker process, serve the API."""
    settings = get_settings()
    host, port = host or settings.host, port or settings.port
    migrate()
    worker_proc = subprocess.Popen(_worker_argv(1), cwd=ROOT)
    console.print(f"[bold]Cloze[/bold] data in {settings.home}")
    console.print(f"  database  {_redact(settings.database_url)}")
    console.print(f"  storage   {settings.storage_url}")
    console.print(f"  broker    {_redact(settings.broker_url)}")
    console.print(f"  worker    pid {worker_proc.pid}")
    os.environ["CLOZE_HOST"] = host
    get_settings.cache_clear()
    if not get_settings().api_keys_required:
        console.print("  api keys  not required: listening on loopback only "
                      "(CLOZE_REQUIRE_API_KEYS=true to require them)")
    console.print(f"[bold green]Cloze is running at http://{host}:{port}[/bold green] "
                  f"(API docs at http://{host}:{port}/docs)")
    try:
        api(host=host, port=port)
    finally:
        worker_proc.send_signal(signal.SIGTERM)
        try:
            worker_proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker_proc.kill()


keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


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
