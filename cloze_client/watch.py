"""`cloze jobs watch`: what the job stream says, kept as one state and drawn with rich."""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from cloze_client.sse import StreamEvent
from cloze_client.types import TERMINAL, Job

BARS = "▁▂▃▄▅▆▇█"
# Shown beside the losses when the job's evals report them (fine-tuning). Names of
# jobspec/metrics.py's table, which the client cannot import (tests/test_project.py checks).
EVAL_METRICS = ("accuracy", "f1")
STATUS_STYLE = {"queued": "yellow", "running": "cyan", "succeeded": "green",
                "failed": "red", "cancelled": "magenta", "paused": "blue"}


def sparkline(values: list[float], width: int = 60) -> str:
    """The whole curve as at most `width` unicode bars, lowest to highest: a longer curve
    is cut into `width` runs of consecutive points, each drawn as its mean (so the start
    of a long run stays in view, as on a W&B chart)."""
    if len(values) > width:
        edges = [round(i * len(values) / width) for i in range(width + 1)]
        values = [sum(values[a:b]) / (b - a) for a, b in zip(edges, edges[1:], strict=False)]
    if not values:
        return ""
    low, high = min(values), max(values)
    span = high - low
    return "".join(BARS[0 if span == 0 else round((v - low) / span * (len(BARS) - 1))]
                   for v in values)


def elapsed_seconds(job: Job | None, now: datetime | None = None) -> float | None:
    """Started to finished (or to now, while it runs); None before it started."""
    if not job or not job.get("started_at"):
        return None
    start = datetime.fromisoformat(str(job["started_at"]).replace("Z", "+00:00"))
    end = datetime.fromisoformat(str(job["finished_at"]).replace("Z", "+00:00")) \
        if job.get("finished_at") else now or datetime.now(UTC)
    return max(0.0, (end - start).total_seconds())


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes \
        else f"{secs}s"


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@dataclass
class WatchState:
    job: Job | None = None
    points: dict[int, dict[str, Any]] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)

    def apply(self, event: StreamEvent) -> None:
        if event.event == "status":
            self.job = event.data
        elif event.event == "metric":
            # A step comes again with its eval results: merge, by step.
            self.points.setdefault(event.data["step"], {}).update(event.data)
        elif event.event == "log":
            self.logs.append(f"{event.data['level']}: {event.data['message']}")

    def needs_total(self) -> bool:
        """Running, with points, but no step count known yet (fine-tuning, at first)."""
        return bool(self.job and self.job["status"] == "running" and self.points
                    and not self.job["progress"]["total_steps"])

    def refresh(self, job: Job) -> None:
        """The job's progress from GET /v1/jobs/{id}; its status stays the stream's, so
        that the final status is the one the stream ends with."""
        if self.job is not None:
            job = {**job, "status": self.job["status"]}
        self.job = job

    def _latest(self, key: str) -> float | None:
        for step in sorted(self.points, reverse=True):
            if key in self.points[step]:
                return float(self.points[step][key])
        return None

    @property
    def step(self) -> int:
        from_points = max(self.points) if self.points else 0
        return max(from_points, self.job["progress"]["step"] if self.job else 0)

    @property
    def total_steps(self) -> int:
        return self.job["progress"]["total_steps"] if self.job else 0

    def train_losses(self) -> list[float]:
        return [float(p["train_loss"]) for _, p in sorted(self.points.items())
                if "train_loss" in p]

    def eta_seconds(self) -> float | None:
        """As the API computes it: the steps left at the tokens per step seen so far."""
        if not self.job or self.job["status"] != "running":
            return None
        tps, seen, step = self._latest("tokens_per_second"), self._latest("tokens_seen"), \
            self.step
        if not tps or not seen or not step or self.total_steps <= step:
            return None
        return (self.total_steps - step) * seen / step / tps

    def render(self) -> RenderableType:
        job = self.job
        status = job["status"] if job else "connecting"
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        title = Text(f"{job['id']}  {job['name']}  " if job else "")
        title.append(status, style=STATUS_STYLE.get(status, ""))
        if job and job.get("cancel_requested") and status == "running":
            title.append(" (cancelling)", style="magenta")
        elif job and job.get("pause_requested") and status == "running":
            title.append(" (pausing)", style="yellow")
        grid.add_row("job", title)
        total = self.total_steps
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=max(total, 1), completed=self.step, width=40),
                    f"{self.step}/{total or '?'}")
        grid.add_row("step", bar)
        losses = f"train {_num(self._latest('train_loss'))}   " \
                 f"eval {_num(self._latest('eval_loss'))}"
        for metric in EVAL_METRICS:  # a classifier's scores, where its evals report them
            if (value := self._latest(metric)) is not None:
                losses += f"   {metric} {_num(value)}"
        grid.add_row("loss", losses)
        tps = self._latest("tokens_per_second")
        timing = f"ETA {duration(self.eta_seconds())}" if status not in TERMINAL \
            else f"took {duration(elapsed_seconds(job))}"
        if status == "running":
            timing = f"elapsed {duration(elapsed_seconds(job))}   {timing}"
        grid.add_row("speed", f"{'-' if tps is None else f'{tps:,.0f}'} tokens/s   {timing}")
        grid.add_row("curve", Text(sparkline(self.train_losses()) or "-", style="cyan"))
        if job and job["error"]:
            grid.add_row("error", Text(f"{job['error']['code']}: {job['error']['message']}",
                                       style="red"))
        logs = Text("\n".join(self.logs[-5:]), style="dim")
        return Group(grid, logs) if self.logs else grid

    def outcome(self) -> tuple[int, str]:
        """The exit code and one line saying how the job ended."""
        job = self.job
        if job is None:
            return 1, "the stream ended before the job's status was known"
        losses = f"train loss {_num(job['train_loss'])}, eval loss {_num(job['eval_loss'])}"
        where = f"step {job['progress']['step']}/{job['progress']['total_steps']}"
        if job["status"] == "succeeded":
            return 0, f"{job['id']} succeeded at {where}: {losses}; model {job['model_id']}"
        if job["status"] not in TERMINAL:
            return 1, f"{job['id']} is still {job['status']} at {where}: the stream ended"
        if job["status"] == "cancelled":
            return 1, f"{job['id']} was cancelled at {where}"
        error = job["error"] or {"code": "unknown", "message": "no reason recorded"}
        return 1, f"{job['id']} {job['status']} at {where}: {error['code']}: " \
                  f"{error['message']}"
