"""Fine-tuning: a base model (ours or imported) for text or token classification.

run_finetune reads labelled texts or tagged sentences, trains a new head (and the encoder,
or LoRA adapters on it) on the one loop, and exports a plain Hugging Face directory that
transformers.pipeline loads.
"""

from workers.engine.finetune.run import FinetuneResult, run_finetune

__all__ = ["FinetuneResult", "run_finetune"]
