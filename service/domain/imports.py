"""Importing a Hugging Face model directory from an archive, safely.

An archive is untrusted: members must be plain files with relative paths (no "..", no
links, no devices), weights must be safetensors (nothing is ever unpickled), and what it
extracts to is bounded as it is written (total bytes and compression ratio; declared sizes
are not trusted). Every path the directory names (index files' weight_map, config files'
*_file entries) must stay inside it. config.json decides what inference allocates and
transformers fills any weight it lacks with random values, so the model config.json
describes is built on the meta device (no memory) and checked against the safetensors
headers: its word embeddings must be there with the shape config.json implies, no tensor
may have another shape than the model's, and what the weights lack must be small.

A directory as the Hub ships it holds more than Cloze loads (pickled copies of the weights,
ONNX and OpenVINO exports, training scripts): such files are skipped, never written to disk,
and the model's details list them. What remains must be a model transformers loads without
code of the archive's: a head (its pipeline task), or a base model without one
(`BertModel`, `GPT2Model`, ... or a sentence-transformers directory): task
"feature-extraction". The tokenizer is loaded and checked against the config (its largest id
within the vocabulary); a BERT directory with only vocab.txt gets its tokenizer.json here.

All of this is blocking file work: the route runs `import_archive` in a thread.
"""

import errno
import json
import lzma
import math
import re
import shutil
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from jobspec.formats import MAX_LABEL_CHARS, MAX_LABELS
from jobspec.model_dir import MODEL_FILE_SUFFIXES, check_model_dir, weight_map_files
from jobspec.model_facts import (
    FEATURE_EXTRACTION,
    FILL_MASK,
    TEXT_CLASSIFICATION,
    TEXT_GENERATION,
    TOKEN_CLASSIFICATION,
    auto_class,
)
from jobspec.pooling import read_pooling
from service.domain.refusals import DomainError, Invalid, TooLarge, Unsupported
from service.settings import Settings
from service.transformers_import import transformers

PICKLED = {".bin", ".pt", ".pth", ".pkl", ".ckpt", ".h5", ".msgpack", ".onnx"}
TASKS = {  # the head's class name ends with... -> pipeline task (jobspec/model_facts.py)
    "ForMaskedLM": FILL_MASK, "ForPreTraining": FILL_MASK,
    "ForSequenceClassification": TEXT_CLASSIFICATION,
    "ForTokenClassification": TOKEN_CLASSIFICATION,
    "ForCausalLM": TEXT_GENERATION, "LMHeadModel": TEXT_GENERATION,
}
MAX_MEMBERS = 200
CHUNK = 1024 * 1024
# Small archives (a config and a tokenizer) legitimately compress far better than weights
# do; the ratio applies past this many extracted bytes.
RATIO_FLOOR = 8 * 1024 * 1024
# config.json, tokenizer_config.json and index files are read whole; real ones are KBs.
MAX_JSON_BYTES = 16 * 1024 * 1024
# A safetensors header lists names, dtypes and shapes: ~100 bytes a tensor.
MAX_HEADER_BYTES = 16 * 1024 * 1024
# Weights the model has and the files lack are filled randomly: a new head is fine (a few
# thousand parameters), a missing embedding matrix is not.
MISSING_FLOOR, MISSING_FRACTION = 10_000, 0.1
# Columns of the models table these values are stored in.
MAX_MODEL_TYPE_CHARS, MAX_MASK_TOKEN_CHARS, MAX_ARCHITECTURES = 32, 32, 8
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
               "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
               "I64": 8, "U64": 8, "F64": 8}
# Config entries that count repeated modules: each needs at least one tensor in the weights
# (and a huge one would make even building the model on the meta device take minutes).
REPEATS = re.compile(r"(layers|layer|experts)$")
MAX_REPEATS = 1024  # real models have up to ~130 layers and ~400 experts


def _bad(message: str) -> Invalid:
    return Invalid("invalid_archive", f"file: {message}", "file")


def _too_big(message: str) -> TooLarge:
    return TooLarge("payload_too_large", f"file: {message}", "file")


def _member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or name.startswith(("/", "\\")) or "\\" in name:
        raise _bad(f"member {name!r} has an absolute or parent path")
    return path


def _kept(path: PurePosixPath) -> bool:
    """Whether a member is a file Cloze keeps: configs, safetensors weights, tokenizer and
    card files. Pickled weights, other exports and scripts are skipped, never written."""
    return path.suffix.lower() in MODEL_FILE_SUFFIXES


class _Budget:
    """Counts extracted bytes as they are written, against the total and ratio limits;
    remembers the members skipped."""

    def __init__(self, archive_bytes: int, settings: Settings) -> None:
        self.archive_bytes = archive_bytes
        self.max_bytes = settings.max_extract_bytes
        self.max_ratio = settings.max_compression_ratio
        self.written = 0
        self.skipped: list[str] = []

    def add(self, n: int) -> None:
        self.written += n
        if self.written > self.max_bytes:
            raise _too_big(f"the archive extracts to more than {self.max_bytes} bytes")
        if self.written > RATIO_FLOOR and self.written > self.max_ratio * self.archive_bytes:
            raise _too_big(f"the archive extracts to more than {self.max_ratio:g} times its "
                           "size (a compression bomb?)")


def _write(source: IO[bytes], target: Path, budget: _Budget) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        out = open(target, "xb")  # a second member of the same name is refused, not merged
    except FileExistsError:
        raise _bad(f"member {target.name!r} appears twice") from None
    with out:
        while block := source.read(CHUNK):
            budget.add(len(block))
            out.write(block)


def _tar_members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Members as the stream reaches them: a tar of a million members stops at the limit
    without being listed whole."""
    for count, member in enumerate(tar, start=1):
        if count > MAX_MEMBERS:
            raise _bad(f"more than {MAX_MEMBERS} members")
        yield member


def _extract_tar(archive: Path, dest: Path, budget: _Budget) -> None:
    with tarfile.open(archive, "r:*") as tar:
        for m in _tar_members(tar):
            path = _member_path(m.name)
            if m.isdir():
                continue
            if not m.isfile():  # symlinks, hard links, devices, fifos
                raise _bad(f"member {m.name!r} is not a regular file")
            if not _kept(path):
                budget.skipped.append(path.as_posix())
                continue
            source = tar.extractfile(m)
            assert source is not None  # a regular file always has contents
            _write(source, dest / path, budget)


def _zip_entries(archive: Path) -> int | None:
    """The member count the end record declares, read before zipfile parses the whole
    central directory (millions of tiny entries would take gigabytes as ZipInfo objects)."""
    find_end = getattr(zipfile, "_EndRecData", None)
    if find_end is None:
        return None
    with open(archive, "rb") as f:
        end = find_end(f)
    return None if end is None else int(end[zipfile._ECD_ENTRIES_TOTAL])  # type: ignore[attr-defined]


def _extract_zip(archive: Path, dest: Path, budget: _Budget) -> None:
    declared = _zip_entries(archive)
    if declared is not None and declared > MAX_MEMBERS:
        raise _bad(f"more than {MAX_MEMBERS} members")
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
            if not _kept(path):
                budget.skipped.append(path.as_posix())
                continue
            with zf.open(info) as source:  # checks the CRC when the member ends
                _write(source, dest / path, budget)


def extract(archive: Path, dest: Path, settings: Settings) -> tuple[Path, list[str]]:
    """Extract a .tar.gz/.tgz/.tar/.zip safely: the directory holding config.json, and the
    members skipped (relative to that directory where they lie in it)."""
    budget = _Budget(archive.stat().st_size, settings)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if tarfile.is_tarfile(archive):
            _extract_tar(archive, dest, budget)
        elif zipfile.is_zipfile(archive):
            _extract_zip(archive, dest, budget)
        else:
            raise Unsupported("unsupported_format", "file: upload a .tar.gz, .tar or .zip "
                              "archive of a Hugging Face model directory", "file")
    except DomainError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error,
            lzma.LZMAError, NotImplementedError, RuntimeError) as exc:
        # A bad CRC, a truncated stream, an encrypted or unknown compression: the archive's
        # fault, not ours.
        shutil.rmtree(dest, ignore_errors=True)
        raise _bad(f"the archive is damaged or unreadable ({_short(exc)})") from None
    except OSError as exc:
        shutil.rmtree(dest, ignore_errors=True)
        if exc.errno is not None and exc.errno != errno.EINVAL:
            raise  # our disk (full, unwritable): a server error, logged
        raise _bad(f"the archive is damaged or unreadable ({_short(exc)})") from None
    configs = sorted(dest.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise _bad("no config.json: archive a directory written by save_pretrained")
    top = configs[0].parent.relative_to(dest).as_posix()
    skipped = sorted(name.removeprefix(f"{top}/") if top != "." else name
                     for name in budget.skipped)
    return configs[0].parent, skipped


def _short(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return text if len(text) <= 200 else text[:199] + "…"


def _read_json(path: Path) -> Any:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise _bad(f"{path.name} is larger than {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError):
        raise _bad(f"{path.name} is not valid JSON") from None


def _text(value: Any, limit: int, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise _bad(f"{what} must be a string of 1 to {limit} characters")
    return value


def _labels(config: dict[str, Any]) -> dict[str, str] | None:
    """id2label, bounded as dataset labels are (it is shown on every GET of the model)."""
    labels = config.get("id2label")
    if labels is None:
        return None
    if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
        raise _bad(f"config.json: id2label must map at most {MAX_LABELS} ids to labels")
    for key, label in labels.items():
        if len(key) > 16:
            raise _bad("config.json: id2label's keys must be label ids")
        _text(label, MAX_LABEL_CHARS, "config.json: every id2label label")
    return labels


def _task(architectures: list[str], model_dir: Path) -> str:
    """The pipeline task of a model directory: its head's, or feature-extraction for a
    base model (what transformers' AutoModel maps a model type to) and for a
    sentence-transformers directory that names no architecture."""
    transformers()  # imported under its lock first (service/transformers_import.py)
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    task = next((t for arch in architectures for suffix, t in TASKS.items()
                 if arch.endswith(suffix)), None)
    if task is not None:
        return task
    bases = {name for names in MODEL_MAPPING_NAMES.values()
             for name in ((names,) if isinstance(names, str) else names)}
    if any(arch in bases for arch in architectures) or \
            (not architectures and (model_dir / "modules.json").is_file()):
        return FEATURE_EXTRACTION
    raise _bad(f"cannot tell the model's task from architectures {architectures!r}: Cloze "
               "imports base models (BertModel, GPT2Model, ...) and models with a masked-LM, "
               "causal-LM, sequence- or token-classification head")


def describe(model_dir: Path, settings: Settings) -> dict[str, Any]:
    """Task, architecture, mask token, labels and pooling of a model directory; checks it
    is loadable and that its config matches its weights and its tokenizer."""
    config = _read_json(model_dir / "config.json")
    if not isinstance(config, dict) or not config.get("model_type"):
        raise _bad("config.json has no model_type")
    model_type = _text(config["model_type"], MAX_MODEL_TYPE_CHARS, "config.json: model_type")
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or len(architectures) > MAX_ARCHITECTURES:
        raise _bad(f"config.json: architectures must be a list of at most {MAX_ARCHITECTURES}")
    for arch in architectures:
        _text(arch, 100, "config.json: every architecture")
    task = _task(architectures, model_dir)
    labels = _labels(config)
    tok_config = model_dir / "tokenizer_config.json"
    if tok_config.exists():  # a bounded column: checked before anything is loaded
        tokenizer = _read_json(tok_config)
        token = tokenizer.get("mask_token") if isinstance(tokenizer, dict) else None
        token = token.get("content") if isinstance(token, dict) else token
        if token is not None:
            _text(token, MAX_MASK_TOKEN_CHARS, "tokenizer_config.json: mask_token")
    try:
        check_model_dir(model_dir)
        pooling = read_pooling(model_dir)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    shapes = weight_shapes(model_dir)
    check_config_against_weights(model_dir, config, task, shapes, settings)
    mask = check_tokenizer(model_dir, config)
    return {"task": task, "architecture": model_type, "mask_token": mask,
            "architectures": architectures, "labels": labels, "pooling": pooling.describe()}


def import_archive(archive: Path, dest: Path, settings: Settings
                   ) -> tuple[Path, dict[str, Any], int]:
    """Extract and check an uploaded model archive: (model directory, what describe() says
    plus the members skipped, the directory's bytes). Blocking: run it in a thread."""
    model_dir, skipped = extract(archive, dest, settings)
    try:
        info = describe(model_dir, settings)
    except Invalid as exc:
        pickled = [name for name in skipped if PurePosixPath(name).suffix.lower() in PICKLED]
        if pickled and not any(model_dir.glob("*.safetensors")):
            raise _bad(f"{exc.message.removeprefix('file: ')} ({', '.join(pickled[:3])} "
                       "not imported: only safetensors weights are accepted, pickled formats "
                       "can run code; convert with save_pretrained(safe_serialization=True))"
                       ) from None
        raise
    info["skipped_files"] = skipped
    size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    return model_dir, info, size


# ---- the tokenizer ----------------------------------------------------------------------


def check_tokenizer(model_dir: Path, config: dict[str, Any]) -> str | None:
    """Load the tokenizer as serving and training will (writing tokenizer.json when the
    directory has only a slow tokenizer's files, e.g. BERT's vocab.txt), and check that
    every id it can produce has a row in the model's embeddings. Its mask token, if any."""
    AutoTokenizer = transformers().AutoTokenizer  # noqa: N806 (transformers' name)
    fast_file = model_dir / "tokenizer.json"
    if not fast_file.exists():
        if not any((model_dir / name).exists() for name in ("vocab.txt", "vocab.json")):
            raise _bad("no tokenizer files: tokenizer.json, or vocab.txt for a WordPiece "
                       "(BERT) tokenizer")
    else:  # checked as JSON first: a vocabulary past the model's is refused before loading
        _check_vocabulary(_raw_token_ids(_read_json(fast_file), config), config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:  # any failure is the uploaded files': report it
        raise _bad(f"transformers cannot load the tokenizer: {_short(exc)}") from None
    if not tokenizer.is_fast:
        raise _bad("the tokenizer has no fast (tokenizers) version: include tokenizer.json")
    if not fast_file.exists():
        tokenizer.save_pretrained(str(model_dir))  # tokenizer.json, as serving loads it
    _check_vocabulary(tokenizer.get_vocab().values(), config)
    mask = tokenizer.mask_token
    return None if mask is None else _text(mask, MAX_MASK_TOKEN_CHARS, "the mask token")


def _raw_token_ids(data: Any, config: dict[str, Any]) -> list[int]:
    """The ids tokenizer.json assigns (its model's vocabulary and its added tokens), after
    checking that it has no more entries than the model has embeddings: every entry costs
    memory wherever the tokenizer is loaded (2 M of them ~1 GB), and a real tokenizer has
    one entry per id, one merge per merged token, one added token per special id."""
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict):
        raise _bad("tokenizer.json has no tokenizer model")
    vocab = model.get("vocab")
    ids: list[Any] = (list(vocab.values()) if isinstance(vocab, dict)
                      else list(range(len(vocab))) if isinstance(vocab, list) else [])
    added = data.get("added_tokens") or []
    added = added if isinstance(added, list) else []
    merges = model.get("merges")
    vocab_size = config.get("vocab_size")
    if isinstance(vocab_size, int) and not isinstance(vocab_size, bool):
        for what, count in (("vocabulary entries", len(ids)), ("added tokens", len(added)),
                            ("merges", len(merges) if isinstance(merges, list) else 0)):
            if count > vocab_size:
                raise _bad(f"tokenizer.json has {count} {what}, more than a tokenizer of "
                           f"the model's {vocab_size} tokens (config.json's vocab_size) has")
    ids += [t.get("id") for t in added if isinstance(t, dict)]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise _bad("tokenizer.json: token ids must be non-negative integers")
    return ids


def _check_vocabulary(ids: Any, config: dict[str, Any]) -> None:
    """Every token id must have a row in the word embeddings (else inference would index
    past them)."""
    vocab_size = config.get("vocab_size")
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        return
    largest = max(ids, default=-1)
    if largest >= vocab_size:
        raise _bad(f"the tokenizer has token ids up to {largest}; config.json's vocab_size "
                   f"is {vocab_size}, so the model has no embedding for the ids past it")


# ---- safetensors headers --------------------------------------------------------------


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype, shape) of a safetensors file, read from its header alone, after
    checking that every tensor's bytes lie in the file and match its dtype and shape."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _bad(f"{path.name} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise _bad(f"{path.name} is not a safetensors file (header size)")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError):
        raise _bad(f"{path.name} is not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise _bad(f"{path.name} is not a safetensors file")
    data_bytes = size - 8 - length
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            ok = dtype in DTYPE_BYTES and isinstance(shape, list) and all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape) and \
                all(isinstance(o, int) and not isinstance(o, bool) for o in (start, end))
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise _bad(f"{path.name}: tensor {name[:100]!r} has an invalid header entry")
        if not 0 <= start <= end <= data_bytes or \
                end - start != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise _bad(f"{path.name}: tensor {name[:100]!r} of shape {shape} does not fit the "
                       "bytes in the file (a truncated or dummy weights file)")
        tensors[name] = (dtype, tuple(shape))
    return tensors


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files transformers loads: model.safetensors, else the shards that
    model.safetensors.index.json names (each checked to stay in the folder and exist)."""
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    index = model_dir / "model.safetensors.index.json"
    if not index.is_file():
        raise _bad("no model.safetensors (or model.safetensors.index.json and its shards) "
                   "in the model directory: only safetensors weights are accepted")
    try:
        names = weight_map_files(model_dir, index)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    files = []
    for name in sorted(names):
        path = model_dir / name
        if path.suffix != ".safetensors" or not path.is_file():
            raise _bad(f"{index.name} names {name!r}, which is not a .safetensors file in "
                       "the archive")
        files.append(path)
    return files


def weight_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for path in weight_files(model_dir):
        shapes.update({name: shape for name, (_, shape) in read_header(path).items()})
    return shapes


# ---- config.json against the weights -------------------------------------------------


def _repeat_counts(config: dict[str, Any]) -> Iterator[tuple[str, int]]:
    for key, value in config.items():
        if isinstance(value, dict):
            yield from ((f"{key}.{k}", v) for k, v in _repeat_counts(value))
        elif isinstance(value, int) and not isinstance(value, bool) and REPEATS.search(key):
            yield key, value


def _meta_model(model_dir: Path, task: str) -> Any:
    """The model config.json describes, as the serving pipeline builds it, on the meta
    device: shapes and parameter counts without allocating a byte."""
    import torch

    auto = getattr(transformers(), auto_class(task))
    try:
        config = transformers().AutoConfig.from_pretrained(str(model_dir))
        with torch.device("meta"):
            # dtype=None: no process-wide torch.set_default_dtype while inference runs in
            # other threads (a config.json "dtype" would set one); shapes do not depend on it.
            return auto.from_config(config, dtype=None)
    except Exception as exc:  # any failure here is the uploaded config's: report it
        raise _bad(f"transformers cannot build a {task} model from config.json: "
                   f"{_short(exc)}") from None


def _plain(name: str, prefix: str) -> str:
    """A parameter name as transformers matches it across base and head checkpoints."""
    name = name.removeprefix(f"{prefix}.") if prefix else name
    return re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name))


def check_config_against_weights(model_dir: Path, config: dict[str, Any], task: str,
                                 shapes: dict[str, tuple[int, ...]], settings: Settings) -> None:
    tensors = sum(1 for s in shapes.values() if math.prod(s))  # zero-size ones are free
    for key, value in _repeat_counts(config):
        if value > MAX_REPEATS:
            raise _bad(f"config.json says {key} = {value}; at most {MAX_REPEATS} are accepted")
        if value > tensors:
            raise _bad(f"config.json says {key} = {value}, but the weights hold only "
                       f"{tensors} tensors")
    have = sum(math.prod(s) for s in shapes.values())
    if have > settings.max_import_parameters:
        raise _bad(f"the weights hold {have:,} parameters; the limit is "
                   f"{settings.max_import_parameters:,}")
    model = _meta_model(model_dir, task)
    params = dict(model.named_parameters())  # tied weights once, as checkpoints store them
    wants = sum(p.numel() for p in params.values())
    if wants > settings.max_import_parameters:
        raise _bad(f"config.json describes a model of {wants:,} parameters; the limit is "
                   f"{settings.max_import_parameters:,}")
    embeddings = model.get_input_embeddings()
    want = tuple(embeddings.weight.shape) if embeddings is not None else None
    if want is not None and want not in set(shapes.values()):
        raise _bad(f"config.json implies word embeddings of shape {list(want)} (vocabulary "
                   "size x hidden size), and the weights hold no tensor of that shape")
    prefix = getattr(model, "base_model_prefix", "") or ""
    stored = {_plain(n, prefix): s for n, s in shapes.items()}
    for name, param in params.items():
        found = stored.get(_plain(name, prefix))
        if found is not None and found != tuple(param.shape):
            raise _bad(f"config.json makes {name} of shape {list(param.shape)}, and the "
                       f"weights hold it with shape {list(found)}")
    missing = wants - have
    if missing > MISSING_FLOOR + MISSING_FRACTION * have:
        raise _bad(f"config.json describes a model of {wants:,} parameters and the weights "
                   f"hold {have:,}; transformers would fill the {missing:,} missing ones "
                   "with random values")
