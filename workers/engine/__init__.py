"""Cloze training engine: pure PyTorch/transformers code, no service dependencies.

It reads a local corpus file, writes local directories and reports through a Reporter.
"""

from workers.engine.config import Hyperparameters, ModelConfig, PretrainConfig, TokenizerConfig
from workers.engine.errors import ConfigError, CorpusError, EngineError
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
    "TokenizerConfig",
    "run_pretraining",
]
