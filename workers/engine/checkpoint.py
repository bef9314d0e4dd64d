"""Write and read training checkpoints and the final export; safetensors and JSON, never pickle.

A checkpoint directory holds model.safetensors + config.json (a loadable HF model), the
tokenizer, optimizer.safetensors (AdamW moments), trainer_state.json (step, tokens seen,
RNG states, sampler position, config) and manifest.json, written last, with every file's
size and sha256: a directory without a valid manifest is incomplete and never resumed from.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from workers.engine.failures import EngineError

MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
# With early stopping, the best eval's weights when they are not the checkpoint's own.
BEST_WEIGHTS = "best.safetensors"
FORMAT_VERSION = 3  # 3: one loop; trainer_state holds a fingerprint and the objective's RNG


def checkpoint_dir(workdir: str | Path, step: int) -> Path:
    """Where the checkpoint of a step goes: workdir/checkpoints/step-XXXXXXXX."""
    return Path(workdir) / "checkpoints" / f"step-{step:08d}"


def encode_rng_state(state: torch.Tensor) -> str:
    """A torch RNG state (uint8 tensor) as base64 text for JSON."""
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def decode_rng_state(text: str) -> torch.Tensor:
    """The inverse of encode_rng_state."""
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def restore_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                      tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> None:
    """Load what flatten_optimizer wrote into an optimizer built the same way."""
    current = optimizer.state_dict()
    names = {id(p): n for n, p in model.named_parameters()}
    ours = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    if ours != [g["param_names"] for g in saved["param_groups"]]:
        raise EngineError("the checkpoint's optimizer does not match this model's parameters")
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    for index, values in saved["scalars"].items():
        for name, value in values.items():
            # AdamW keeps "step" as a float32 tensor; load_state_dict moves it where needed.
            state.setdefault(int(index), {})[name] = torch.tensor(value, dtype=torch.float32)
    # The groups' hyperparameters come from this run's config; the rate is set every step.
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})


def write_manifest(directory: Path, step: int) -> None:
    """List every file with size and sha256; written last, so its presence means complete."""
    files = {}
    for path in sorted(directory.iterdir()):
        if path.name == MANIFEST or not path.is_file():
            continue
        files[path.name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    tmp = directory / (MANIFEST + ".tmp")
    _write_json(tmp, {"format_version": FORMAT_VERSION, "step": step, "files": files})
    os.replace(tmp, directory / MANIFEST)  # atomic: readers never see a partial manifest


def verify_checkpoint(directory: str | Path) -> bool:
    """True if the manifest is present and every file it lists has its size and sha256."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if TRAINER_STATE not in files:
            return False
        for name, entry in files.items():
            path = directory / name
            if Path(name).name != name or not path.is_file():
                return False
            if path.stat().st_size != entry["bytes"] or _sha256(path) != entry["sha256"]:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def save_checkpoint(
    directory: Path,
    *,
    step: int,
    model: torch.nn.Module,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    card: str | None = None,
    best_weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write model, tokenizer, optimizer and trainer state (and the model card, README.md;
    early stopping's best weights) to directory, then the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    if card is not None:
        (directory / "README.md").write_text(card, encoding="utf-8")
    model.save_pretrained(directory)  # model.safetensors + config.json
    tokenizer.save_pretrained(directory)  # so a checkpoint is usable on its own
    tensors, optimizer_json = flatten_optimizer(optimizer, model)
    save_file(tensors, str(directory / "optimizer.safetensors"))
    if best_weights is not None:
        save_file({k: v.contiguous() for k, v in best_weights.items()},
                  str(directory / BEST_WEIGHTS))
    _write_json(directory / TRAINER_STATE, {
        "format_version": FORMAT_VERSION,
        "step": step,
        **trainer_state,
        "optimizer": optimizer_json,
    })
    write_manifest(directory, step)
    return directory


def read_trainer_state(directory: str | Path) -> dict[str, Any]:
    """trainer_state.json of a verified checkpoint; EngineError if incomplete or foreign."""
    directory = Path(directory)
    if not verify_checkpoint(directory):
        raise EngineError(f"checkpoint {directory.name} is incomplete or corrupt")
    state = json.loads((directory / TRAINER_STATE).read_text(encoding="utf-8"))
    if state.get("format_version") != FORMAT_VERSION:
        raise EngineError(f"checkpoint format {state.get('format_version')} cannot be resumed "
                          f"by this engine (format {FORMAT_VERSION})")
    return state


def load_checkpoint(directory: str | Path, state: dict[str, Any], model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer) -> None:
    """Load the weights and optimizer state of a checkpoint read by read_trainer_state."""
    directory = Path(directory)
    weights = load_file(str(directory / "model.safetensors"))
    own = model.state_dict()
    if any(k in own and own[k].shape != v.shape for k, v in weights.items()):
        raise EngineError("the checkpoint's weights do not match the model configuration")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # save_pretrained leaves out weights tied to others (output to input embeddings); a
    # missing key is fine when its tensor is one that was loaded, as loading copies in place.
    storage = {name: t.data_ptr() for name, t in own.items()}
    loaded = {storage[k] for k in weights if k in storage}
    if unexpected or any(storage[k] not in loaded for k in missing):
        raise EngineError("the checkpoint's weights do not match the model configuration")
    restore_optimizer(optimizer, model,
                      load_file(str(directory / "optimizer.safetensors")), state["optimizer"])


def read_best_weights(directory: str | Path) -> dict[str, torch.Tensor] | None:
    """Early stopping's best weights saved with a checkpoint (verified with it), if any."""
    path = Path(directory) / BEST_WEIGHTS
    return load_file(str(path)) if path.is_file() else None


def save_export(directory: Path, model: torch.nn.Module, tokenizer: Any) -> Path:
    """The final model in plain transformers layout: loadable by from_pretrained/pipeline."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
