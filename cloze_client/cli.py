"""`cloze datasets|jobs|sweeps|models ...`: the API from a terminal, through cloze_client.Client.

Ids and data a script may want go to stdout; progress, tables' chrome and errors to
stderr. A mistake the user can make (an unknown id, a server that is down, a spec file
that does not parse) prints one line and exits 1, never a traceback."""

import csv
import json
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from cloze_client.client import Client
from cloze_client.errors import ClozeError
from cloze_client.types import TERMINAL, Evaluation, Job, JobEstimate, Model, Sweep, Trial
from cloze_client.watch import WatchState, duration, elapsed_seconds

datasets_app = typer.Typer(help="Upload, list, show and delete datasets.", no_args_is_help=True)
jobs_app = typer.Typer(help="Submit, list, watch, pause, resume and cancel training jobs; "
                       "delete a finished job's checkpoints.",
                       no_args_is_help=True)
sweeps_app = typer.Typer(help="Submit, list, show, plot and cancel hyperparameter sweeps.",
                         no_args_is_help=True)
models_app = typer.Typer(help="Import, list, show, download and query models (fill-mask, "
                         "embeddings).", no_args_is_help=True)

Url = Annotated[str | None, typer.Option(
    "--url", help="the API's address (default: $CLOZE_URL, else http://127.0.0.1:8000)",
    show_default=False)]
ApiKey = Annotated[str | None, typer.Option(
    "--api-key", help="an API key (default: $CLOZE_API_KEY)", show_default=False)]
AsJson = Annotated[bool, typer.Option("--json", help="print the API's JSON")]


def _err() -> Console:
    return Console(stderr=True)


def _out() -> Console:
    return Console()


def fail(message: str) -> NoReturn:
    error = _err()
    error.print("[red]error:[/red] ", end="")
    error.print(message, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def connected(url: str | None, api_key: str | None) -> Iterator[Client]:
    """A client; an API error or a file that cannot be read or written becomes one line
    and exit code 1."""
    try:
        with Client(url, api_key) as client:
            yield client
    except ClozeError as exc:
        fail(str(exc))
    except tarfile.TarError as exc:  # a download that is not the archive it should be
        fail(f"the download is not a readable archive: {exc}")
    except OSError as exc:  # a file we read or write: permissions, a full disk
        fail(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _print_table(columns: list[str], rows: list[list[str]] | list[list[str | Text]], *,
                 wrap: tuple[str, ...] = (), title: str | None = None) -> None:
    """A plain table on stdout. Only the free-text columns named in `wrap` (names,
    sentences) wrap to fit a narrow terminal; every other column (ids, numbers, times, and
    every header) keeps its full width, even if the line must then run past the terminal's
    edge. Piped into a file or another program, nothing wraps (as with kubectl): one row a
    line. A cell is shown as it is written (names are the user's: "[red]" in one is not
    markup); a Text cell brings its own style."""
    table = Table(box=None, header_style="bold", pad_edge=False, title=title)
    least = 2 * (len(columns) - 1)  # the padding between columns
    for i, name in enumerate(columns):
        if name in wrap:
            table.add_column(name, overflow="fold")
            least += min(20, max([len(name), *(len(r[i]) for r in rows)]))
        else:
            width = max([len(name), *(len(r[i]) for r in rows)])
            table.add_column(name, no_wrap=True, min_width=width)
            least += width
    for row in rows:
        table.add_row(*(Text(c) if isinstance(c, str) else c for c in row))
    out = _out()
    if not out.is_terminal:
        wide = Console(width=100_000, no_color=True)
        with wide.capture() as captured:
            wide.print(table)
        sys.stdout.write("".join(line.rstrip() + "\n"
                                 for line in captured.get().splitlines()))
        return
    if out.width < least:  # rich would cut or drop columns to fit
        out = Console(width=least, force_terminal=True)
    out.print(table)


def _when(timestamp: str) -> str:
    """2026-11-28T23:09:31.123456Z -> 2026-11-28 23:09 (UTC)."""
    return timestamp[:16].replace("T", " ")


def _transfer() -> Progress:
    return Progress("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=_err(), transient=True)


# -- datasets -------------------------------------------------------------------------


@datasets_app.command("upload")
def datasets_upload(
        file: Annotated[Path, typer.Argument(
            help=".txt, .jsonl, .json (SQuAD), .conll, .csv, .tsv (or .gz of them) or .parquet")],
        name: Annotated[str | None, typer.Option(help="a name (default: the file's)")] = None,
        tag_column: Annotated[int | None, typer.Option(
            help="CoNLL files: the tag column, counted from 0")] = None,
        url: Url = None, api_key: ApiKey = None) -> None:
    """Upload a corpus or labelled set with a progress bar; prints the dataset's id."""
    if not file.is_file():
        fail(f"{file}: no such file")
    with connected(url, api_key) as client, _transfer() as bar:
        task = bar.add_task(f"uploading {file.name}", total=file.stat().st_size)
        dataset = client.upload_dataset(
            file, name=name, tag_column=tag_column,
            progress=lambda done, total: bar.update(task, completed=done, total=total))
    _err().print(f"{dataset['id']}: {dataset['documents']:,} documents, "
                 f"{_size(dataset['bytes'])}, {dataset['kind'].replace('_', ' ')} "
                 f"({dataset['format']})", highlight=False)
    print(dataset["id"])


@datasets_app.command("list")
def datasets_list(limit: int = 20, after: str | None = None, as_json: AsJson = False,
                  url: Url = None, api_key: ApiKey = None) -> None:
    """Your datasets, newest first."""
    with connected(url, api_key) as client:
        page = client.list_datasets(limit=limit, after=after)
    if as_json:
        return _print_json(page)
    _print_table(["id", "name", "format", "kind", "documents", "size", "created"], [
        [d["id"], d["name"], d["format"], d["kind"], f"{d['documents']:,}", _size(d["bytes"]),
         _when(d["created_at"])] for d in page["data"]], wrap=("name",))


@datasets_app.command("show")
def datasets_show(dataset_id: str, limit: Annotated[int, typer.Option(
                      help="records to show (at most 100)")] = 5,
                  top: Annotated[int, typer.Option(help="labels to show per column")] = 10,
                  as_json: AsJson = False, url: Url = None, api_key: ApiKey = None) -> None:
    """One dataset: what it is, its columns (type, role, text lengths, label counts) and its
    first records (GET /v1/datasets/{id} and its preview)."""
    with connected(url, api_key) as client:
        dataset = client.get_dataset(dataset_id)
        preview = client.preview_dataset(dataset_id, limit=limit, top=top)
    if as_json:
        return _print_json({**dataset, "preview": preview})
    out = _out()
    out.print(f"{dataset['id']}  {dataset['name']}: {dataset['format']}, "
              f"{dataset['kind'].replace('_', ' ')}, {dataset['documents']:,} documents, "
              f"{_size(dataset['bytes'])}", highlight=False)
    if splits := dataset.get("splits"):
        out.print("splits: " + ", ".join(f"{k} {v:,}" for k, v in splits.items()),
                  highlight=False)
    rows = []
    for column in preview["columns"]:
        lengths, labels = column.get("lengths"), column.get("labels")
        summary = ""
        if labels:
            summary = ", ".join(f"{c['value']} {c['count']:,}" for c in labels["counts"])
            if labels["other"]:
                summary += f", other {labels['other']:,} ({labels['distinct']:,} distinct)"
        elif lengths:
            summary = (f"length {lengths['min']}-{lengths['max']}, mean {lengths['mean']:g} "
                       f"{_bars(lengths['counts'])}")
        rows.append([column["name"], column["type"], column.get("role") or "",
                     f"{column.get('empty', 0):,}", summary])
    if rows:
        _print_table(["column", "type", "role", "empty", "values"], rows, wrap=("values",))
    out.print(f"first {len(preview['records'])} records:", highlight=False)
    for record in preview["records"]:
        sys.stdout.write(json.dumps(record, ensure_ascii=False)[:500] + "\n")


def _bars(counts: list[int]) -> str:
    """A histogram as a line of block characters, one per bin."""
    blocks = " ▁▂▃▄▅▆▇█"
    top = max(counts) or 1
    return "".join(blocks[round(8 * c / top)] if c else "·" for c in counts)


@datasets_app.command("delete")
def datasets_delete(dataset_id: str, url: Url = None, api_key: ApiKey = None) -> None:
    """Delete a dataset (and the token shards made from it)."""
    with connected(url, api_key) as client:
        client.delete_dataset(dataset_id)
    _err().print(f"deleted {dataset_id}")


# -- jobs -----------------------------------------------------------------------------


def read_spec(path: Path) -> dict[str, Any]:
    """A job spec from a .json or .yaml/.yml file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        fail(f"{path}: no such file")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{path}: cannot read it ({exc.__class__.__name__}: {exc})")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            fail(f"{path}: reading YAML needs PyYAML (pip install pyyaml); or write the spec "
                 "as JSON")
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            fail(f"{path}: not valid YAML: {' '.join(str(exc).split())}")
    else:
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            fail(f"{path}: not valid JSON: {exc}")
    if not isinstance(spec, dict):
        fail(f"{path}: a job spec is a mapping (an object), not {type(spec).__name__}")
    return spec


def _count(n: int | None, what: str) -> str | None:
    return None if n is None else f"{n:,} {what}"


def _about(seconds: float) -> str:
    """A time to wait, as a person says it: 45 s, 23 min, 2 h 05 min."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


TIME_SOURCES = {"measured": "measured on", "scaled": "scaled from another model size measured on",
                "default": "nothing measured yet: a deliberately slow default rate"}


def estimate_lines(e: JobEstimate) -> list[str]:
    """A dry run's answer for a person: what would run, on what data, for how long."""
    objective = e["spec"].get("objective") or e["spec"].get("task")
    epochs = "" if e["epochs"] is None else f" ({e['epochs']:.3g} epochs)"
    lines = [f"{e['name']}: {e['type']}{f' ({objective})' if objective else ''}, "
             f"{e['steps']:,} steps{epochs}"]
    model = [_count(e["parameters"], "parameters"),
             None if e["memory_bytes"] is None else f"memory up to {_size(e['memory_bytes'])}"]
    d = e["data"]
    data = [_count(d["documents"], "documents"), _count(d["tokens"], "tokens"),
            _count(d["train_blocks"], "training blocks"),
            _count(d["validation_blocks"], "validation blocks"),
            _count(d["train_examples"], "training examples"),
            _count(d["validation_examples"], "validation examples"), _count(d["labels"], "labels")]
    lines.append(f"  model  {', '.join(x for x in model if x) or '-'}")
    lines.append(f"  data   {', '.join(x for x in data if x)} ({d['source']})")
    t = e["time"]
    if t is None:
        lines.append("  time   - (no estimate: the data's size is unknown)")
    else:
        source = TIME_SOURCES[t["source"]]
        if t["source"] != "default":
            source += f" {t['worker_kind'] or 'a worker'}"
        lines.append(f"  time   about {_about(t['seconds'])} ({t['tokens']:,} tokens at "
                     f"{t['tokens_per_second']:,.0f} tokens/s, {source})")
    return lines


@jobs_app.command("submit")
def jobs_submit(
        spec_file: Annotated[Path, typer.Argument(help="the job spec, .json or .yaml")],
        dataset: Annotated[str | None, typer.Option(
            "--dataset", help="set the spec's dataset_id")] = None,
        name: Annotated[str | None, typer.Option(help="set the spec's name")] = None,
        watch: Annotated[bool, typer.Option("--watch", help="then watch it to the end")] = False,
        dry_run: Annotated[bool, typer.Option(
            "--dry-run", help="only check the spec and print what the job would do")] = False,
        as_json: Annotated[bool, typer.Option(
            "--json", help="with --dry-run: print the API's JSON")] = False,
        url: Url = None, api_key: ApiKey = None) -> None:
    """Submit a job spec (POST /v1/jobs); prints the job's id."""
    spec = read_spec(spec_file)
    if dataset:
        spec["dataset_id"] = dataset
    if name:
        spec["name"] = name
    if dry_run:
        with connected(url, api_key) as client:
            estimate = client.estimate_job(spec)
        if as_json:
            return _print_json(estimate)
        _err().print("dry run: nothing was created", style="dim", highlight=False)
        print("\n".join(estimate_lines(estimate)))
        return None
    with connected(url, api_key) as client:
        job = client.submit_job(spec)
    unit = "cells" if job["type"] == "evaluate" else "steps"  # an evaluate job counts cells
    _err().print(f"{job['id']}: {job['type']} job {job['name']!r}, {job['status']}, "
                 f"{job['progress']['total_steps']} {unit}", highlight=False)
    print(job["id"])
    if watch:
        jobs_watch(job["id"], url=url, api_key=api_key)


@jobs_app.command("list")
def jobs_list(limit: int = 20, after: str | None = None,
              status: Annotated[str | None, typer.Option(
                  help="only jobs in this status (queued, running, ...)")] = None,
              as_json: AsJson = False, url: Url = None, api_key: ApiKey = None) -> None:
    """Your jobs, newest first."""
    with connected(url, api_key) as client:
        page = client.list_jobs(limit=limit, after=after, status=status)
    if as_json:
        return _print_json(page)
    _print_table(["id", "name", "type", "status", "step", "train loss", "eval loss", "model"], [
        [j["id"], j["name"], j["type"], j["status"],
         f"{j['progress']['step']}/{j['progress']['total_steps']}", _loss(j["train_loss"]),
         _loss(j["eval_loss"]), j["model_id"] or "-"] for j in page["data"]],
        wrap=("name",))


# The job type whose result is a table of scores (GET /v1/jobs/{id}'s "evaluation").
EVALUATE = "evaluate"


def job_lines(job: Job) -> list[str]:
    """A job for a person (as `gh run view`): what it is, where it stands, how long it
    took, what it made or why it failed."""
    p, spec = job["progress"], job["spec"]
    evaluate = job["type"] == EVALUATE
    kind = spec.get("objective") or spec.get("task")
    if evaluate:  # what it evaluates: the model, and the one it is compared with
        kind = spec.get("model_id", "") + (f" vs {spec['compare_model_id']}"
                                           if spec.get("compare_model_id") else "")
    lines = [f"{job['id']} {job['name']}: {job['type']}{f' ({kind})' if kind else ''}, "
             f"{job['status']}"
             + (" (cancelling)" if job["cancel_requested"] and job["status"] == "running" else "")
             + (" (pausing)" if job.get("pause_requested") and job["status"] == "running"
                else "")]
    # An evaluate job's progress counts cells (a task trained one way), not steps.
    progress = [f"{p['step']:,}/{p['total_steps']:,} cells"] if evaluate else \
        [f"{p['step']:,}/{p['total_steps']:,} steps", f"{p['tokens_seen']:,} tokens"]
    if p["tokens_per_second"] is not None and not evaluate:
        progress.append(f"{p['tokens_per_second']:,.0f} tokens/s")
    if job["status"] == "running" and p["eta_seconds"] is not None:
        progress.append(f"ETA {duration(p['eta_seconds'])}")
    lines.append(f"  progress  {', '.join(progress)}")
    if not evaluate:  # its fine-tunes' losses are no loss of its own: its table says more
        lines.append(f"  loss      train {_loss(job['train_loss'])}, "
                     f"eval {_loss(job['eval_loss'])}")
    started, finished = job["started_at"], job["finished_at"]
    if not started:
        times = f"created {_when(job['created_at'])} UTC, not started"
    else:
        times = f"started {started[:10]} {started[11:19]} UTC"
        if finished:  # the date again only if it changed
            same_day = finished[:10] == started[:10]
            times += f", finished {finished[11:19] if same_day else _when(finished)}"
        times += f", {'took' if finished else 'running for'} {duration(elapsed_seconds(job))}"
    lines.append(f"  time      {times}")
    if not evaluate:  # its datasets and models are the table's
        lines.append(f"  dataset   {job['dataset_id']}")
        lines.append(f"  model     {job['model_id'] or '-'}")
    lines.append(f"  attempts  {job['attempts']}")
    if job.get("waiting_reason"):
        lines.append(f"  waiting   {job['waiting_reason']}")
    if job["error"]:
        lines.append(f"  error     {job['error']['code']}: {job['error']['message']}")
    return lines


def _score(value: float | None) -> str:
    """A test score as the model card writes it; blank while its cell is not done."""
    return "" if value is None else f"{value:.4f}"


SIGN_STYLES = {"+": "green", "-": "red", "=": "dim"}


def _difference(value: float | None, sign: str | None) -> Text:
    """+0.0523 (+): the sign says better, worse or a tie (closer than the table's `tie`)."""
    if value is None or sign is None:
        return Text("")
    return Text(f"{value:+.4f} ({sign})", style=SIGN_STYLES.get(sign, ""))


def evaluation_table(job: Job, evaluation: Evaluation
                     ) -> tuple[list[str], list[list[str | Text]], str]:
    """An evaluate job's table for a person: columns, rows and the "cells N of M done"
    line. The comparison's columns only when the job compares two models; random init's
    only when it trains them."""
    compare = bool(job["spec"].get("compare_model_id"))
    random_init = job["spec"].get("random_init") is not False
    columns = ["task", "metric", "model", *(["compare model"] if compare else []),
               *(["random init"] if random_init else []), "baseline",
               *(["model - random init"] if random_init else []),
               *(["model - compare"] if compare else [])]
    rows: list[list[str | Text]] = []
    for r in evaluation["rows"]:
        baseline = "" if r["baseline"] is None else \
            f"{_score(r['baseline'])} ({r['baseline_name']})" if r["baseline_name"] \
            else _score(r["baseline"])
        rows.append([r["task"], r["metric"], _score(r["model"]),
                     *([_score(r["compare_model"])] if compare else []),
                     *([_score(r["random_init"])] if random_init else []), baseline,
                     *([_difference(r["difference"], r["sign"])] if random_init else []),
                     *([_difference(r["compare_difference"], r["compare_sign"])]
                       if compare else [])])
    done = f"cells {evaluation['cells_done']} of {evaluation['cells_total']} done"
    return columns, rows, done


@jobs_app.command("show")
def jobs_show(job_id: str, as_json: AsJson = False, url: Url = None,
              api_key: ApiKey = None) -> None:
    """One job: status, progress, losses, times, dataset, model, error; an evaluate job's
    table of scores (--json: all of it, the spec included)."""
    with connected(url, api_key) as client:
        job = client.get_job(job_id)
    if as_json:
        return _print_json(job)
    print("\n".join(job_lines(job)))
    if evaluation := job.get("evaluation"):
        columns, rows, done = evaluation_table(job, evaluation)
        print()
        _print_table(columns, rows, wrap=("task", "baseline"))
        print(done)
    return None


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, url: Url = None, api_key: ApiKey = None) -> None:
    """Cancel a job: a queued one at once, a running one at its next step."""
    with connected(url, api_key) as client:
        job = client.cancel_job(job_id)
    state = job["status"] if job["status"] in TERMINAL else f"{job['status']}, stopping"
    _err().print(f"{job_id}: {state}")


@jobs_app.command("pause")
def jobs_pause(job_id: str, url: Url = None, api_key: ApiKey = None) -> None:
    """Pause a job: a queued one at once, a running one checkpointed at its next step."""
    with connected(url, api_key) as client:
        job = client.pause_job(job_id)
    pausing = job["status"] == "running" and job.get("pause_requested")
    state = "running, pausing at its next step" if pausing else job["status"]
    _err().print(f"{job_id}: {state}")


@jobs_app.command("resume")
def jobs_resume(job_id: str, url: Url = None, api_key: ApiKey = None) -> None:
    """Resume a paused job: it continues exactly where it was paused."""
    with connected(url, api_key) as client:
        job = client.resume_job(job_id)
    _err().print(f"{job_id}: {job['status']}")


@jobs_app.command("delete-checkpoints")
def jobs_delete_checkpoints(job_id: str, url: Url = None, api_key: ApiKey = None) -> None:
    """Delete a finished job's checkpoints, freeing their room in your storage quota
    (models published from them stay)."""
    with connected(url, api_key) as client:
        gone = client.delete_checkpoints(job_id)
    n = gone["deleted"]
    _err().print(f"{job_id}: deleted {n} checkpoint{'' if n == 1 else 's'} "
                 f"({_size(gone['bytes'])} freed)")


@jobs_app.command("watch")
def jobs_watch(job_id: str, url: Url = None, api_key: ApiKey = None) -> None:
    """Follow a job live (status, step, losses, tokens/s, ETA, loss curve) until it ends:
    exit 0 if it succeeded, 1 if it failed or was cancelled."""
    state = WatchState()
    try:
        with connected(url, api_key) as client:
            events = client.stream(job_id)
            first = next(events, None)  # an unknown job: the error alone, no view
            if first is not None:
                state.apply(first)
            refreshed = time.monotonic()
            with Live(state.render(), console=_err(), refresh_per_second=4) as live:
                for event in events:
                    state.apply(event)
                    if state.needs_total() and time.monotonic() - refreshed > 5:
                        # A fine-tuning job learns its step count once it has read its
                        # data; status events come only with status changes.
                        refreshed = time.monotonic()
                        state.refresh(client.get_job(job_id))
                    live.update(state.render())
    except KeyboardInterrupt:
        _err().print(f"stopped watching {job_id} (the job goes on)")
        raise typer.Exit(130) from None
    code, line = state.outcome()
    print(line)
    raise typer.Exit(code)


# Metric names are jobspec/metrics.py's, spelled here because the client installs without
# the service's packages (it speaks HTTP only); tests/test_project.py checks they match.
METRIC_COLUMNS = ["step", "train_loss", "eval_loss", "learning_rate", "grad_norm",
                  "tokens_per_second", "tokens_seen", "perplexity", "accuracy"]
# The table's headers (the CSV keeps the API's names): short enough for 80 columns.
METRIC_HEADERS = {"train_loss": "train loss", "eval_loss": "eval loss", "learning_rate": "lr",
                  "grad_norm": "grad norm", "tokens_per_second": "tokens/s",
                  "tokens_seen": "tokens"}


@jobs_app.command("metrics")
def jobs_metrics(job_id: str,
                 as_csv: Annotated[bool, typer.Option("--csv", help="CSV on stdout")] = False,
                 max_points: Annotated[int | None, typer.Option(
                     help="thin a long curve on the server (eval points are kept)")] = None,
                 as_json: AsJson = False, url: Url = None, api_key: ApiKey = None) -> None:
    """A job's loss curve: one row per logged step."""
    with connected(url, api_key) as client:
        points: list[dict[str, Any]] = [dict(p) for p in
                                        client.metrics(job_id, max_points=max_points)]
    if as_json:
        return _print_json(points)
    extra = sorted({k for p in points for k in p} - set(METRIC_COLUMNS))
    columns = [c for c in METRIC_COLUMNS if any(c in p for p in points) or c == "step"] + extra
    if as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(points)
        return
    _print_table([METRIC_HEADERS.get(c, c) for c in columns], [
        ["" if c not in p else f"{p[c]:.4g}" if isinstance(p[c], float) else str(p[c])
         for c in columns] for p in points])


# -- sweeps ---------------------------------------------------------------------------


@sweeps_app.command("submit")
def sweeps_submit(
        spec_file: Annotated[Path, typer.Argument(
            help="the sweep spec (base job spec, search_space, trials), .json or .yaml")],
        url: Url = None, api_key: ApiKey = None) -> None:
    """Submit a sweep (POST /v1/sweeps); its first trials are queued; prints its id."""
    spec = read_spec(spec_file)
    with connected(url, api_key) as client:
        sweep = client.create_sweep(spec)
    _err().print(f"{sweep['id']}: sweep {sweep['name']!r}, {sweep['status']}, "
                 f"{sweep['spec']['trials']} trials ({sweep['spec']['parallel']} at once), "
                 f"{sweep['spec']['direction']} {sweep['spec']['metric']}", highlight=False)
    print(sweep["id"])


def _best(sweep: Sweep) -> str:
    return "-" if sweep["best_value"] is None else f"{sweep['best_value']:.4g}"


@sweeps_app.command("list")
def sweeps_list(limit: int = 20, after: str | None = None, as_json: AsJson = False,
                url: Url = None, api_key: ApiKey = None) -> None:
    """Your sweeps, newest first."""
    with connected(url, api_key) as client:
        page = client.list_sweeps(limit=limit, after=after)
    if as_json:
        return _print_json(page)
    _print_table(["id", "name", "status", "trials", "metric", "best", "model", "created"], [
        [s["id"], s["name"], s["status"], f"{s['trials_started']}/{s['spec']['trials']}",
         s["spec"]["metric"], _best(s), s["model_id"] or "-", _when(s["created_at"])]
        for s in page["data"]], wrap=("name",))


def _params(trial: Trial) -> str:
    """learning_rate=0.00031, schedule=cosine: the searched fields without their prefix."""
    return ", ".join(
        f"{name.removeprefix('hyperparameters.')}="
        f"{f'{value:.4g}' if isinstance(value, float) else value}"
        for name, value in trial["params"].items())


@sweeps_app.command("show")
def sweeps_show(sweep_id: str, as_json: AsJson = False, url: Url = None,
                api_key: ApiKey = None) -> None:
    """A sweep: its status, best value and model, and one row per trial (* the best)."""
    with connected(url, api_key) as client:
        sweep = client.get_sweep(sweep_id)
    if as_json:
        return _print_json(sweep)
    spec = sweep["spec"]
    print(f"{sweep['id']} {sweep['name']!r}: {sweep['status']}, "
          f"{sweep['trials_started']}/{spec['trials']} trials started, "
          f"{spec['direction']} {spec['metric']}, best {_best(sweep)}, "
          f"model {sweep['model_id'] or '-'}")
    if sweep["error"]:
        print(f"error: {sweep['error']['code']}: {sweep['error']['message']}")
    rows = []
    for t in sweep["trials"]:
        pruned = f"at step {t['pruned_step']}" if t["pruned"] else "-"
        rows.append([str(t["number"]), t["job_id"], t["status"], str(t["step"]), _params(t),
                     "-" if t["value"] is None else f"{t['value']:.4g}", pruned,
                     "*" if t["job_id"] == sweep["best_job_id"] else ""])
    _print_table(["trial", "job", "status", "step", "params", spec["metric"], "pruned",
                  "best"], rows, wrap=("params",))


@sweeps_app.command("cancel")
def sweeps_cancel(sweep_id: str, url: Url = None, api_key: ApiKey = None) -> None:
    """Cancel a sweep and its trials: queued ones never start, running ones stop."""
    with connected(url, api_key) as client:
        sweep = client.cancel_sweep(sweep_id)
    stopping = sum(t["status"] not in TERMINAL for t in sweep["trials"])
    _err().print(f"{sweep_id}: {sweep['status']}"
                 + (f", {stopping} trial(s) stopping" if stopping else ""))


@sweeps_app.command("plot")
def sweeps_plot(
        sweep_id: str,
        output: Annotated[Path, typer.Option(
            "--output", "-o", help="the SVG file to write")],
        url: Url = None, api_key: ApiKey = None) -> None:
    """Each trial's eval metric against the step, as an SVG file; prints its path."""
    with connected(url, api_key) as client:
        output.write_text(client.sweep_svg(sweep_id), encoding="utf-8")
    print(output)


# -- models ---------------------------------------------------------------------------


@models_app.command("list")
def models_list(limit: int = 20, after: str | None = None, as_json: AsJson = False,
                url: Url = None, api_key: ApiKey = None) -> None:
    """Your models, newest first."""
    with connected(url, api_key) as client:
        page = client.list_models(limit=limit, after=after)
    if as_json:
        return _print_json(page)
    rows = []
    for m in page["data"]:
        job = m["job_id"] or "-"
        if m.get("checkpoint_step") is not None:
            job += f" @ {m['checkpoint_step']}"
        rows.append([m["id"], m["name"], m["task"], m["architecture"], _size(m["bytes"]), job,
                     _when(m["created_at"])])
    _print_table(["id", "name", "task", "architecture", "size", "job", "created"], rows,
                 wrap=("name",))


@models_app.command("show")
def models_show(model_id: str, url: Url = None, api_key: ApiKey = None) -> None:
    """One model, as JSON."""
    with connected(url, api_key) as client:
        _print_json(client.get_model(model_id))


@models_app.command("download")
def models_download(
        model_id: str,
        directory: Annotated[Path, typer.Argument(
            help="extract into DIR/<model id>/ (or a .tar.gz path to keep the archive)")],
        url: Url = None, api_key: ApiKey = None) -> None:
    """Download a model's export: a plain Hugging Face directory; prints where it went."""
    if directory.exists() and not directory.is_dir():
        fail(f"{directory} exists and is not a directory")
    with connected(url, api_key) as client, _transfer() as bar:
        task = bar.add_task(f"downloading {model_id}", total=None)
        where = client.download_model(
            model_id, directory,
            progress=lambda done, total: bar.update(task, completed=done, total=total))
    print(where)


@models_app.command("fill-mask")
def models_fill_mask(
        model_id: str, text: Annotated[str, typer.Argument(
            help="text with the model's mask token ([MASK] for BERT, <mask> for RoBERTa)")],
        top_k: Annotated[int | None, typer.Option(help="predictions per mask")] = None,
        as_json: AsJson = False, url: Url = None, api_key: ApiKey = None) -> None:
    """Predict the masked token(s) of TEXT; prints a table per mask."""
    with connected(url, api_key) as client:
        answer = client.fill_mask(model_id, text, top_k=top_k)
    if as_json:
        return _print_json(answer)
    per_mask = answer if answer and isinstance(answer[0], list) else [answer]
    for i, predictions in enumerate(per_mask, 1):
        _print_table(["score", "token", "sequence"], [
            [f"{p['score']:.4f}", p["token_str"], p["sequence"]] for p in predictions],
            wrap=("sequence",), title=f"mask {i} of {len(per_mask)}" if len(per_mask) > 1 else None)



def import_summary(model: Model) -> str:
    """An imported model in one line: task, architecture, pooling, size, what was skipped."""
    parts = [model["task"], model["architecture"]]
    details = model.get("details") or {}
    pooling = details.get("pooling")
    if pooling:
        said = f"pooling {'+'.join(pooling.get('modes') or []) or '-'}"
        if pooling.get("normalize"):
            said += ", normalized"
        if pooling.get("max_seq_length"):
            said += f", up to {pooling['max_seq_length']} tokens"
        parts.append(said)
    parts.append(_size(model["bytes"]))
    line = f"{model['id']} {model['name']!r}: {', '.join(parts)}"
    skipped = details.get("skipped_files") or []
    if skipped:
        shown = ", ".join(skipped[:6]) + (f", +{len(skipped) - 6} more" if len(skipped) > 6
                                           else "")
        line += f"; skipped {len(skipped)} file{'s' if len(skipped) > 1 else ''}: {shown}"
    return line


@models_app.command("import")
def models_import(
        path: Annotated[Path, typer.Argument(
            help="a model directory (as the Hub, huggingface-cli download or save_pretrained "
                 "writes it) or a .tar.gz, .tar or .zip of one", show_default=False)],
        name: Annotated[str | None, typer.Option(
            help="a name (default: the directory's)")] = None,
        url: Url = None, api_key: ApiKey = None) -> None:
    """Import a Hugging Face model directory or archive; prints the model's id.

    Safetensors weights, to serve or fine-tune. A directory is packed into a temporary
    .tar.gz (without the files the server skips), then uploaded with a progress bar."""
    from cloze_client.client import is_model_archive

    if not path.exists():
        fail(f"{path}: no such file or directory")
    if not path.is_dir() and not (path.is_file() and is_model_archive(path)):
        fail(f"{path}: not a model directory or a .tar.gz, .tar or .zip archive")
    label = path.resolve().name

    with connected(url, api_key) as client, _transfer() as bar:
        task = bar.add_task(f"packing {label}", total=None)

        def packing(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        def sending(done: int, total: int | None) -> None:
            checking = total is not None and done >= total
            bar.update(task, completed=done, total=total, description=(
                f"importing {label} (the server checks it)" if checking
                else f"uploading {label}"))

        try:
            model = client.import_model(path, name=name, progress=sending, packing=packing)
        except ValueError as exc:
            bar.stop()
            fail(str(exc))
    _err().print(import_summary(model), highlight=False, soft_wrap=True)
    print(model["id"])


@models_app.command("embed")
def models_embed(
        model_id: str,
        texts: Annotated[list[str], typer.Argument(help="one or more texts", show_default=False)],
        normalize: Annotated[bool | None, typer.Option(
            "--normalize/--no-normalize",
            help="unit-length vectors (default: as the model's files say)",
            show_default=False)] = None,
        prompt_name: Annotated[str | None, typer.Option(
            help="one of the model's sentence-transformers prompts (e.g. query)")] = None,
        as_json: AsJson = False, url: Url = None, api_key: ApiKey = None) -> None:
    """Embed each TEXT: one vector per text, a JSON array a line.

    POST /v1/models/{id}/feature-extraction; --json prints the API's JSON (one array of
    the vectors)."""
    with connected(url, api_key) as client:
        vectors = client.feature_extraction(model_id, texts, normalize=normalize,
                                            prompt_name=prompt_name)
    if as_json:
        return _print_json(vectors)
    for vector in vectors:
        print(json.dumps(vector))


@models_app.command("similarity")
def models_similarity(
        model_id: str,
        source: Annotated[str, typer.Argument(help="the sentence to compare",
                                              show_default=False)],
        sentences: Annotated[list[str], typer.Argument(
            help="the sentences to compare it with", show_default=False)],
        as_json: AsJson = False, url: Url = None, api_key: ApiKey = None) -> None:
    """Score each SENTENCE against SOURCE (cosine): a table of score and sentence.

    POST /v1/models/{id}/sentence-similarity; the sentences keep their order."""
    with connected(url, api_key) as client:
        scores = client.sentence_similarity(model_id, source, sentences)
    if as_json:
        return _print_json(scores)
    _print_table(["score", "sentence"], [
        [f"{score:.4f}", sentence] for score, sentence in zip(scores, sentences, strict=True)],
        wrap=("sentence",))
