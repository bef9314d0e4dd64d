"""Every path a Hugging Face model directory names must stay inside it.

transformers follows the shard names in `model.safetensors.index.json` ("weight_map") as
paths: a directory whose index names `../../other-owner/model.safetensors` would load
someone else's weights. The API checks this when a model is imported and the worker checks
it again before it loads a base model, so both share this one function. (The `*_file`
entries of tokenizer_config.json are not followed: transformers 5 uses the files in the
directory, and old configs often hold their author's absolute paths there.)

Only the standard library here: the API imports it without torch, the engine without the
service.
"""

import json
from pathlib import Path, PurePosixPath
from typing import Any

# The files a model directory keeps when it is imported (configs, safetensors weights,
# tokenizer and card files); every other file is skipped and never stored: pickled copies
# of the weights, ONNX and OpenVINO exports, scripts. The client leaves them out of what it
# uploads (they are most of a Hub directory's size), the API skips them in any archive.
MODEL_FILE_SUFFIXES = frozenset({".json", ".safetensors", ".txt", ".model", ".md", ".jinja"})
# Index files of a few MB name thousands of shards' tensors; a bigger one is not an index.
MAX_INDEX_BYTES = 32 * 1024 * 1024


def confined(model_dir: Path, name: str) -> str | None:
    """None if `name` is a relative path that stays inside model_dir, else why not."""
    path = PurePosixPath(name)
    if not name or "\\" in name or ":" in name or path.is_absolute() or ".." in path.parts:
        return f"{name!r} is not a plain relative path inside the model directory"
    root = model_dir.resolve()
    target = (root / path).resolve()
    if target != root and root not in target.parents:
        return f"{name!r} leads outside the model directory"
    return None


def read_json(path: Path, limit: int = MAX_INDEX_BYTES) -> Any:
    """A JSON file of the directory, refused (ValueError) past `limit` bytes or malformed."""
    if path.stat().st_size > limit:
        raise ValueError(f"{path.name} is larger than {limit} bytes")
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise ValueError(f"{path.name} is not valid JSON") from None


def weight_map_files(model_dir: Path, index: Path) -> set[str]:
    """The shard files an index names, each checked to stay inside model_dir."""
    data = read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise ValueError(f"{index.name}: \"weight_map\" must map tensor names to file names")
    for name in set(weight_map.values()):
        if why := confined(model_dir, name):
            raise ValueError(f"{index.name}: weight_map entry {why}")
    return set(weight_map.values())


def check_model_dir(model_dir: str | Path) -> None:
    """Raise ValueError (with a message for the user) if the directory holds a link or an
    index whose weight_map names a file outside it."""
    root = Path(model_dir)
    for path in root.rglob("*"):
        if path.is_symlink():
            raise ValueError(f"{path.relative_to(root).as_posix()} is a symbolic link")
    for index in root.rglob("*.index.json"):
        weight_map_files(root, index)
