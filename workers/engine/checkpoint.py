"""Write training checkpoints and the final export; safetensors and JSON only, never pickle."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def checkpoint_dir(workdir: str | Path, step: int) -> Path:
    """Where the checkpoint of a step goes: workdir/checkpoints/step-XXXXXXXX."""
    return Path(workdir) / "checkpoints" / f"step-{step:08d}"


def encode_rng_state(state: torch.Tensor) -> str:
    """A torch RNG state (uint8 tensor) as base64 text for JSON."""
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def flatten_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module
                      ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split optimizer state into tensors (for safetensors) and scalars/groups (for JSON)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:  # AdamW's per-parameter "step" is a 0-d tensor
                scalars.setdefault(str(index), {})[key] = _json_safe(value)
    # Parameter names per group make the indices above meaningful outside this process.
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [
        {**_json_safe({k: v for k, v in group.items() if k != "params"}),
         "param_names": [names[id(p)] for p in group["params"]]}
        for group in optimizer.param_groups
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def write_manifest(directory: Path, step: int) -> None:
    """List every file with size and sha256; written last, so its presence means complete."""
    files = {}
    for path in sorted(directory.iterdir()):
        if path.name == MANIFEST or not path.is_file():
            continue
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        files[path.name] = {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}
    tmp = directory / (MANIFEST + ".tmp")
    _write_json(tmp, {"step": step, "files": files})
    os.replace(tmp, directory / MANIFEST)  # atomic: readers never see a partial manifest


def save_checkpoint(
    directory: Path,
    *,
    step: int,
    model: torch.nn.Module,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    trainer_state: dict[str, Any],
) -> Path:
    """Write model, tokenizer, optimizer and trainer state to directory, then the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)  # model.safetensors + config.json
    tokenizer.save_pretrained(directory)  # so a checkpoint is usable on its own
    tensors, optimizer_json = flatten_optimizer(optimizer, model)
    save_file(tensors, str(directory / "optimizer.safetensors"))
    # lr_lambdas holds the schedule function itself; it is rebuilt from the config on resume.
    scheduler_state = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    _write_json(directory / "trainer_state.json", {
        "format_version": FORMAT_VERSION,
        "step": step,
        **trainer_state,
        "optimizer": optimizer_json,
        "scheduler": _json_safe(scheduler_state),
    })
    write_manifest(directory, step)
    return directory


def save_export(directory: Path, model: torch.nn.Module, tokenizer: Any) -> Path:
    """The final model in plain transformers layout: loadable by from_pretrained/pipeline."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
