"""Where a job runs: the device it needs, and how urgent it is among jobs queued for it."""

from typing import Annotated, Literal

from pydantic import Field

from jobspec.common import Strict

DEVICES = ("cpu", "cuda")
# Priority 0-9, higher runs first among the jobs waiting on the same queue (as RabbitMQ and
# Kubernetes count); the middle by default, so a job can be marked less urgent as well as more.
MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 0, 9, 5
Priority = Annotated[int, Field(ge=MIN_PRIORITY, le=MAX_PRIORITY)]


class ResourcesSpec(Strict):
    # cpu or cuda: only a worker of that device takes the job. auto: a GPU if any GPU worker
    # is alive when the job is sent to the queue, else the CPU workers.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Processes (GPUs) one job trains on; multi-process training is not there yet.
    processes: int = Field(default=1, ge=1)


def resources_inconsistency(resources: ResourcesSpec) -> tuple[str, str] | None:
    if resources.processes != 1:
        return ("resources.processes", "multi-process training is not yet supported; "
                "set processes to 1 (or leave it out)")
    return None
