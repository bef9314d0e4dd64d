"""Where a job runs: the device it needs, and how urgent it is among jobs queued for it."""

from typing import Annotated, Literal

from pydantic import Field

from jobspec.common import Strict

DEVICES = ("cpu", "cuda")
# Priority 0-9, higher runs first among the jobs waiting on the same queue (as RabbitMQ and
# Kubernetes count); the middle by default, so a job can be marked less urgent as well as more.
MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 0, 9, 5
# One machine's processes (8 GPUs is the usual most); the worker checks its own count.
MAX_PROCESSES = 64
Priority = Annotated[int, Field(ge=MIN_PRIORITY, le=MAX_PRIORITY)]


class ResourcesSpec(Strict):
    # cpu or cuda: only a worker of that device takes the job. auto: a GPU if any GPU worker
    # is alive when the job is sent to the queue, else the CPU workers.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Processes one job trains on, on one worker's machine (torchrun): one per GPU on a GPU
    # worker, one per core or more on a CPU worker; each takes batch_size / processes rows
    # of every batch. The worker refuses more than its GPUs (or CPU cores).
    processes: int = Field(default=1, ge=1, le=MAX_PROCESSES)
    # How the processes share the model: ddp, a whole copy each (gradients summed); fsdp,
    # parameters, gradients and optimizer state sharded among them per transformer layer
    # (PyTorch's FSDP2), for a model whose training does not fit one device. The same
    # numbers and checkpoints either way.
    strategy: Literal["ddp", "fsdp"] = "ddp"


def shards(resources: ResourcesSpec) -> int:
    """Among how many processes a job's training state (weights, gradients, AdamW moments)
    is divided: its processes under fsdp, else 1 (each holds it whole)."""
    return resources.processes if resources.strategy == "fsdp" else 1


def resources_inconsistency(resources: ResourcesSpec) -> tuple[str, str] | None:
    if resources.strategy == "fsdp" and resources.processes < 2:
        return ("resources.strategy", "fsdp shards the model among the job's processes: "
                "set resources.processes to 2 or more, or leave strategy out")
    return None


def batch_inconsistency(resources: ResourcesSpec, batch_size: int) -> tuple[str, str] | None:
    """The global batch is split evenly among the processes, so that they draw the same
    batches, with the same per-step losses, as one process would."""
    if batch_size % resources.processes:
        return ("hyperparameters.batch_size", f"batch_size ({batch_size}) must be a multiple "
                f"of resources.processes ({resources.processes})")
    return None
