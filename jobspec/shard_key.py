"""Where a pretraining job's tokenized data lives, shared by the worker that makes it and
the API that reads its counts (a dry run): the key of every setting that changes it."""

import hashlib
import json

from jobspec.pretrain import PretrainSpec

DATA_FORMAT_VERSION = 2  # 2: objectives and architectures beyond BERT MLM


def data_key(spec: PretrainSpec) -> str:
    """Short stable hash of every setting that changes the prepared data."""
    settings = {
        "format_version": DATA_FORMAT_VERSION,
        "tokenizer": spec.tokenizer.model_dump(mode="json"),
        # The base model's tokenizer, for from_model (a model's files never change).
        "base_model_id": spec.base_model_id if spec.tokenizer.type == "from_model" else None,
        # Special tokens and row framing differ by architecture and objective.
        "architecture": spec.model.architecture,
        "objective": spec.objective,
        # Stored in the tokenizer as model_max_length.
        "max_position_embeddings": spec.model.max_position_embeddings,
        "sequence_length": spec.hyperparameters.sequence_length,
        "validation_fraction": spec.validation_fraction,
    }
    if spec.columns:  # a table's text column (left out when not named: keys stay as before)
        settings["columns"] = spec.columns
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def tokenized_prefix(dataset_id: str, spec: PretrainSpec) -> str:
    """The storage prefix of a dataset's token shards for this spec (meta.json in it is
    written last: its presence means the set is whole)."""
    return f"tokenized/{dataset_id}/{data_key(spec)}"
