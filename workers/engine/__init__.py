"""Cloze training engine: PyTorch, transformers and tokenizers; it knows no database or HTTP.

prepare_data tokenizes a local corpus file once into token shards; run_pretraining and
run_finetune train on the one loop (loop.py) and report through a Reporter.
"""

from workers.engine.checkpoint import verify_checkpoint
from workers.engine.data import data_key, prepare_data
from workers.engine.failures import ConfigError, CorpusError, EngineError, StopRequested
from workers.engine.fit_check import TooBig, check_fits
from workers.engine.pretrain import PretrainResult, estimate_pretrain_bytes, run_pretraining
from workers.engine.reporter import Reporter

__all__ = [
    "ConfigError",
    "CorpusError",
    "EngineError",
    "PretrainResult",
    "Reporter",
    "StopRequested",
    "TooBig",
    "check_fits",
    "data_key",
    "estimate_pretrain_bytes",
    "prepare_data",
    "run_pretraining",
    "verify_checkpoint",
]
