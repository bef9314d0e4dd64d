"""How an encoder's token vectors become one embedding: the sentence-transformers layout.

sentence-transformers keeps this beside the weights: `modules.json` lists the modules (the
Transformer at the directory's root, a Pooling module with its `config.json`, optionally a
Normalize module, which has no files), `sentence_bert_config.json` the longest input
(`max_seq_length`) and `config_sentence_transformers.json` named prompts. This module is the
one reader and writer of those files: the import checks them, serving pools by them, the
engine writes them into its exports (mean pooling), so `SentenceTransformer(dir)` on a
download embeds as Cloze serves.

Only the standard library and pydantic: the API imports it without torch.
"""

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from jobspec.model_dir import read_json

Mode = Literal["cls", "max", "mean", "mean_sqrt_len", "lasttoken"]
# sentence-transformers' config keys, in the order it concatenates the pooled vectors.
MODE_KEYS: dict[str, Mode] = {
    "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_lasttoken": "lasttoken"}
TRANSFORMER = "sentence_transformers.models.Transformer"
POOLING = "sentence_transformers.models.Pooling"
NORMALIZE = "sentence_transformers.models.Normalize"
MODULES = {TRANSFORMER, POOLING, NORMALIZE}
# Real files of this layout are a few hundred bytes; prompts a few KB.
MAX_BYTES = 256 * 1024
MAX_PROMPTS, MAX_PROMPT_CHARS = 32, 2000


class Pooling(BaseModel):
    """The pooling of a model: by default (a model without these files) the mean of its
    last hidden states, not normalised."""

    modes: list[Mode] = Field(default_factory=lambda: list[Mode](["mean"]), min_length=1)
    normalize: bool = False
    max_seq_length: int | None = Field(default=None, ge=1)
    prompts: dict[str, str] = Field(default_factory=dict)
    default_prompt_name: str | None = None
    # False: the prompt's tokens are left out of the pooling (sentence-transformers'
    # include_prompt), which Cloze does not do: such a model is served without prompts.
    include_prompt: bool = True
    from_files: bool = False  # read from the sentence-transformers files (else the default)

    def sentence(self) -> str:
        """In words, for a model card: "the mean of its last hidden states, normalised"."""
        words = {"cls": "the first ([CLS]) token's vector", "max": "the maximum",
                 "mean": "the mean", "mean_sqrt_len": "the sum divided by the square root of "
                 "the length", "lasttoken": "the last token's vector"}
        pooled = " and ".join(words[m] for m in self.modes)
        return (f"{pooled} of its last hidden states over each text's tokens (padding left "
                f"out), {'normalised to unit length' if self.normalize else 'not normalised'}"
                + (f", texts cut at {self.max_seq_length} tokens" if self.max_seq_length
                   else ""))

    def describe(self) -> dict[str, Any]:
        """As a model's details show it."""
        return {"modes": self.modes, "normalize": self.normalize,
                "max_seq_length": self.max_seq_length,
                "prompts": sorted(self.prompts), "from": "sentence-transformers files"
                if self.from_files else "default (mean of the last hidden states)"}


def _json(path: Path) -> Any:
    return read_json(path, MAX_BYTES)


def _modules(model_dir: Path) -> list[dict[str, Any]]:
    modules = _json(model_dir / "modules.json")
    if not isinstance(modules, list) or not modules or len(modules) > 16 or not all(
            isinstance(m, dict) and isinstance(m.get("type"), str)
            and isinstance(m.get("path", ""), str) for m in modules):
        raise ValueError('modules.json must be a list of {"type", "path"} modules')
    for module in modules:
        if module["type"] not in MODULES:
            raise ValueError(f"modules.json names {module['type'][:100]!r}; Cloze serves "
                             "sentence-transformers models made of a Transformer, a Pooling "
                             "and optionally a Normalize module")
    if [m["type"] for m in modules][:1] != [TRANSFORMER] or modules[0].get("path", ""):
        raise ValueError("modules.json: the first module must be the Transformer at the "
                         'directory\'s root (path "")')
    return modules


def _modes(config: Any) -> list[Mode]:
    if not isinstance(config, dict):
        raise ValueError("the pooling config.json must be an object")
    unsupported = [k for k, v in config.items() if k.startswith("pooling_mode_") and v is True
                   and k not in MODE_KEYS]
    if unsupported:
        raise ValueError(f"the pooling config sets {unsupported[0][:60]}, which Cloze does "
                         f"not serve ({', '.join(MODE_KEYS)} are)")
    modes = [mode for key, mode in MODE_KEYS.items() if config.get(key) is True]
    if not modes:
        raise ValueError("the pooling config.json sets no pooling_mode_*")
    return modes


def read_pooling(model_dir: str | Path) -> Pooling:
    """The directory's pooling (the default when it has no modules.json); ValueError, with
    a message for the user, when its files are malformed or name what Cloze cannot serve."""
    root = Path(model_dir)
    if not (root / "modules.json").is_file():
        return Pooling()
    modules = _modules(root)
    pools = [m for m in modules if m["type"] == POOLING]
    if len(pools) != 1:
        raise ValueError("modules.json must name exactly one Pooling module")
    path = pools[0].get("path", "")
    config_file = root / path / "config.json"
    if not path or ".." in Path(path).parts or Path(path).is_absolute() \
            or not config_file.is_file():
        raise ValueError(f"modules.json's Pooling module has no config.json at {path!r}")
    config = _json(config_file)
    pooling = Pooling(modes=_modes(config), from_files=True,
                      normalize=any(m["type"] == NORMALIZE for m in modules),
                      include_prompt=config.get("include_prompt") is not False)
    bert = root / "sentence_bert_config.json"
    if bert.is_file():
        config = _json(bert)
        length = config.get("max_seq_length") if isinstance(config, dict) else None
        if length is not None:
            if not isinstance(length, int) or isinstance(length, bool) or length < 1:
                raise ValueError("sentence_bert_config.json: max_seq_length must be a positive "
                                 "integer")
            pooling.max_seq_length = length
    st = root / "config_sentence_transformers.json"
    if st.is_file():
        config = _json(st)
        prompts = config.get("prompts") if isinstance(config, dict) else None
        if prompts:
            if not isinstance(prompts, dict) or len(prompts) > MAX_PROMPTS or not all(
                    isinstance(k, str) and isinstance(v, str) and len(k) <= 100
                    and len(v) <= MAX_PROMPT_CHARS for k, v in prompts.items()):
                raise ValueError("config_sentence_transformers.json: prompts must map at most "
                                 f"{MAX_PROMPTS} names to texts of at most {MAX_PROMPT_CHARS} "
                                 "characters")
            pooling.prompts = dict(prompts)
        default = config.get("default_prompt_name") if isinstance(config, dict) else None
        if default is not None:
            if default not in pooling.prompts:
                raise ValueError("config_sentence_transformers.json: default_prompt_name is "
                                 "not one of its prompts")
            pooling.default_prompt_name = default
    return pooling


def base_pooling(model_dir: str | Path) -> Pooling | None:
    """A base model's own pooling (its sentence-transformers files), for a model trained
    from it to keep; None when it has none (or files that do not read)."""
    try:
        pooling = read_pooling(model_dir)
    except ValueError:
        return None
    return pooling if pooling.from_files else None


def write_pooling(model_dir: str | Path, pooling: Pooling, hidden_size: int) -> None:
    """Write the sentence-transformers files for this pooling into an export."""
    root = Path(model_dir)
    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": TRANSFORMER},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": POOLING}]
    if pooling.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": NORMALIZE})
    (root / "modules.json").write_text(json.dumps(modules, indent=2))
    (root / "1_Pooling").mkdir(exist_ok=True)
    config: dict[str, Any] = {"word_embedding_dimension": hidden_size}
    config.update({key: mode in pooling.modes for key, mode in MODE_KEYS.items()})
    (root / "1_Pooling" / "config.json").write_text(json.dumps(config, indent=2))
    if pooling.max_seq_length is not None:
        (root / "sentence_bert_config.json").write_text(json.dumps(
            {"max_seq_length": pooling.max_seq_length, "do_lower_case": False}, indent=2))
