"""Cloze training engine: pure PyTorch/transformers code, no service dependencies.

prepare_data tokenizes a local corpus file once into token shards; run_pretraining trains
from them (or resumes from a checkpoint) and reports through a Reporter.
"""

from workers.engine.checkpoint import verify_checkpoint
from workers.engine.config import Hyperparameters, ModelConfig, PretrainConfig, TokenizerConfig
from workers.engine.data import data_key, prepare_data
from workers.engine.errors import ConfigError, CorpusError, EngineError, StopRequested
from workers.engine.reporter import Reporter
from workers.engine.run import PretrainResult, run_pretraining

__all__ = [
    "ConfigError",
    "CorpusError",
    "EngineError",
    "Hyperparameters",
    "ModelConfig",
    "PretrainConfig",
    "PretrainResult",
    "Reporter",
    "StopRequested",
    "TokenizerConfig",
    "data_key",
    "prepare_data",
    "run_pretraining",
    "verify_checkpoint",
]
