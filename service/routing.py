"""Which queue a job goes to, and why a queued job waits: queues by device.

Every name comes from here. A worker consumes the queue of its device (`cloze worker
--device cpu|cuda`): CLOZE_TRAIN_QUEUE plus the device, "train.cpu" and "train.cuda" by
default, so stacks sharing one Redis keep their own queues as they did with one queue.
Pure functions: what the live workers are is passed in (service/queue.py knows them).
"""

from collections.abc import Mapping
from typing import Any

from jobspec.resources import DEFAULT_PRIORITY, DEVICES, MAX_PRIORITY
from service.settings import Settings

# Set by `cloze worker --device cuda --gpus N` for the worker: its GPUs (as
# CUDA_VISIBLE_DEVICES names them), one per pool process (workers/celery_app.py).
GPU_IDS_ENV = "CLOZE_WORKER_GPU_IDS"
# How many of those GPUs each pool process (each job) sees: a multi-process job's ranks.
GPUS_PER_JOB_ENV = "CLOZE_WORKER_GPUS_PER_JOB"


def device_queue(settings: Settings, device: str) -> str:
    """The queue one device's workers consume: "train.cpu", "train.cuda"."""
    if device not in DEVICES:
        raise ValueError(f"no queue for device {device!r}")
    return f"{settings.train_queue}.{device}"


def legacy_queue(settings: Settings) -> str:
    """The one queue of releases before queues by device. CPU workers keep consuming it, so
    jobs sent there before an upgrade (or by an API not yet upgraded) are still trained:
    their specs have no resources.device, which is auto, which a CPU worker serves."""
    return settings.train_queue


def worker_queues(settings: Settings, device: str) -> list[str]:
    """What a worker of this device consumes, its own queue first."""
    own = device_queue(settings, device)
    return [own, legacy_queue(settings)] if device == "cpu" else [own]


def device_of(spec: Mapping[str, Any], live: Mapping[str, int] | None,
              settings: Settings) -> str:
    """The device a job is sent for. auto: a GPU when a live worker serves the cuda queue
    now (what a user asking for "auto" on a stack with GPU workers expects), else the CPU
    workers; decided at each send, so a re-send (the reaper's) may pick a GPU that came up
    since."""
    resources = spec.get("resources") or {}
    device = str(resources.get("device", "auto"))
    if device in DEVICES:
        return device
    return "cuda" if live and live.get(device_queue(settings, "cuda")) else "cpu"


def broker_priority(spec: Mapping[str, Any]) -> int:
    """The message priority for a job's spec priority (0-9, higher first). kombu's Redis
    transport pops priority 0 first (it keeps one list per step and BRPOPs them in
    ascending order), so the scale is turned over."""
    priority = spec.get("priority", DEFAULT_PRIORITY)
    return MAX_PRIORITY - int(priority)


def waiting_reason(spec: Mapping[str, Any], live: Mapping[str, int] | None,
                   settings: Settings) -> str | None:
    """Why a queued job is not taken: no live worker consumes a queue it may go to. None
    when some live worker can take it (it waits its turn) or the broker cannot tell."""
    if live is None:
        return None
    device = str((spec.get("resources") or {}).get("device", "auto"))
    devices = [device] if device in DEVICES else list(DEVICES)
    queues = [device_queue(settings, d) for d in devices]
    if any(live.get(q) for q in queues):
        return None
    start = f"cloze worker --device {device}" if device in DEVICES else "cloze worker"
    return f"waiting: no worker serves {' or '.join(queues)}; start one with `{start}`"


def needs_live(spec: Mapping[str, Any]) -> bool:
    """Whether routing this spec depends on which workers are alive (auto does)."""
    return str((spec.get("resources") or {}).get("device", "auto")) not in DEVICES
