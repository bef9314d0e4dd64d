"""Importing a Hugging Face model directory from an archive, safely.

An archive is untrusted: members must be plain files with relative paths (no "..", no
links, no devices), weights must be safetensors (nothing is ever unpickled), and sizes are
bounded. The model's task is read from config.json.
"""

import json
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from service.errors import ApiError

ALLOWED_SUFFIXES = {".json", ".safetensors", ".txt", ".model", ".md", ".jinja"}
PICKLED = {".bin", ".pt", ".pth", ".pkl", ".ckpt", ".h5", ".msgpack", ".onnx"}
TASKS = {  # the head's class name ends with... -> pipeline task
    "ForMaskedLM": "fill-mask", "ForPreTraining": "fill-mask",
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForCausalLM": "text-generation", "LMHeadModel": "text-generation",
}
MAX_MEMBERS = 200


def _bad(message: str) -> ApiError:
    return ApiError(422, "invalid_archive", f"file: {message}", "file")


def _member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or name.startswith(("/", "\\")) or "\\" in name:
        raise _bad(f"member {name!r} has an absolute or parent path")
    return path


def _check_name(path: PurePosixPath) -> None:
    suffix = path.suffix.lower()
    if suffix in PICKLED:
        raise _bad(f"{path.name}: only safetensors weights are accepted (pickled formats can "
                   "run code); convert with save_pretrained(safe_serialization=True)")
    if suffix not in ALLOWED_SUFFIXES:
        raise _bad(f"{path.name}: unexpected file type in a model directory")


def extract(archive: Path, dest: Path, *, max_bytes: int) -> Path:
    """Extract a .tar.gz/.tgz/.tar/.zip safely; returns the directory holding config.json."""
    total = 0
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            if len(members) > MAX_MEMBERS:
                raise _bad(f"more than {MAX_MEMBERS} members")
            for m in members:
                path = _member_path(m.name)
                if m.isdir():
                    continue
                if not m.isfile():  # symlinks, hard links, devices, fifos
                    raise _bad(f"member {m.name!r} is not a regular file")
                _check_name(path)
                total += m.size
                if total > max_bytes:
                    raise ApiError(413, "payload_too_large", "file: the model is too large")
            tar.extractall(dest, filter="data")
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_MEMBERS:
                raise _bad(f"more than {MAX_MEMBERS} members")
            for info in infos:
                path = _member_path(info.filename)
                if info.is_dir():
                    continue
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise _bad(f"member {info.filename!r} is a symbolic link")
                _check_name(path)
                total += info.file_size
                if total > max_bytes:
                    raise ApiError(413, "payload_too_large", "file: the model is too large")
            zf.extractall(dest)
    else:
        raise ApiError(415, "unsupported_format", "file: upload a .tar.gz, .tar or .zip archive "
                       "of a Hugging Face model directory", "file")
    configs = sorted(dest.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise _bad("no config.json: archive a directory written by save_pretrained")
    return configs[0].parent


def describe(model_dir: Path) -> dict[str, Any]:
    """Task, architecture and mask token of a model directory; checks it is loadable."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _bad("config.json is not valid JSON") from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise _bad("config.json has no model_type")
    if not list(model_dir.glob("*.safetensors")):
        raise _bad("no .safetensors weights in the model directory")
    if not (model_dir / "tokenizer.json").exists() and \
            not (model_dir / "tokenizer_config.json").exists():
        raise _bad("no tokenizer files (tokenizer.json / tokenizer_config.json)")
    architectures = config.get("architectures") or []
    task = next((t for arch in architectures for suffix, t in TASKS.items()
                 if str(arch).endswith(suffix)), None)
    if task is None:
        raise _bad(f"cannot tell the model's task from architectures {architectures!r}")
    mask = None
    tok_config = model_dir / "tokenizer_config.json"
    if tok_config.exists():
        token = json.loads(tok_config.read_text()).get("mask_token")
        mask = token.get("content") if isinstance(token, dict) else token
    return {"task": task, "architecture": str(config["model_type"]), "mask_token": mask,
            "architectures": architectures, "labels": config.get("id2label")}
