"""What a job's model holds and needs, without torch: a pretraining model's exact parameter
count, and a rough upper bound of one process's training memory.

The worker refuses a job that cannot fit (workers/engine/fit_check.py) and the API's dry run
reports the same figures, so both read them from here.
"""

from typing import Any

from jobspec.finetune import FinetuneSpec
from jobspec.model_shapes import ENCODERS
from jobspec.pretrain import PretrainSpec
from jobspec.resources import shards

# RoBERTa numbers positions from padding_idx + 1, so its table has two more rows than the
# positions a sequence may use. Here for the parameter count; the engine reads it too, to
# size a fresh model's table and to read a base model's positions.
ROBERTA_POSITION_OFFSET = 2


def pretrain_parameters(spec: PretrainSpec, vocab_size: int | None = None) -> int:
    """Parameters of the model a fresh pretraining job builds (transformers' classes, tied
    input/output embeddings counted once), for a tokenizer of vocab_size entries (default
    the spec's: a tokenizer trained on a small corpus may end up with fewer).

    Exact: tests compare it with the built models of every architecture and objective.
    """
    shape, arch = spec.model.shape(), spec.model.architecture
    v = vocab_size or spec.tokenizer.vocab_size
    h, i, layers = shape.hidden, shape.intermediate, shape.layers
    positions = spec.model.max_position_embeddings
    # The output layer's own weights when untied (the masked LMs' decoder with its bias).
    output = 0 if spec.model.ties_embeddings() else v * h + (v if arch in ENCODERS else 0)
    if arch in ENCODERS:
        positions += ROBERTA_POSITION_OFFSET if arch == "roberta" else 0
        token_types = 2 if arch == "bert" else 1
        embeddings = (v + positions + token_types) * h + 2 * h  # + LayerNorm
        # Q, K, V, output (with biases), two LayerNorms, the two FFN matrices.
        layer = 4 * (h * h + h) + 4 * h + (h * i + i) + (i * h + h)
        head = h * h + h + 2 * h + v  # transform, LayerNorm, decoder bias
        nsp = (h * h + h) + (2 * h + 2) if spec.objective == "mlm_nsp" else 0  # pooler, NSP
        return embeddings + layers * layer + head + nsp + output
    if arch == "gpt2":
        layer = 4 * h + (h * 3 * h + 3 * h) + (h * h + h) + (h * i + i) + (i * h + h)
        return (v + positions) * h + layers * layer + 2 * h + output
    # llama: no biases, RMSNorm weights only, grouped-query K/V, SwiGLU's three matrices.
    head_dim = h // shape.heads
    layer = 2 * h * h + 2 * h * shape.kv_heads * head_dim + 3 * h * i + 2 * h
    return v * h + layers * layer + h + output


def estimate_bytes(*, parameters: int, layers: int, hidden: int, intermediate: int, heads: int,
                   vocab: int, micro_batch: int, sequence_length: int, shards: int = 1) -> int:
    """A rough upper bound of one process's training memory: fp32 weights, grads and two
    AdamW moments, plus activations and logits of one micro-batch (fp32, as if nothing were
    saved). shards > 1 (fsdp): the process builds the whole model (4 bytes a parameter)
    before sharding it, then keeps 1/shards of the weights, gradients and moments."""
    tokens = micro_batch * sequence_length
    activations = tokens * layers * (16 * hidden + 2 * intermediate) * 4 + \
        micro_batch * heads * sequence_length ** 2 * layers * 4
    logits = tokens * vocab * 4 * 2
    state = parameters * 16 if shards == 1 else parameters * 4 + parameters * 16 // shards
    return int(state + activations + logits)


def estimate_pretrain_bytes(spec: PretrainSpec, vocab_size: int | None = None) -> int:
    """One process's training memory for a model of the spec's shape (before anything is
    built): each process trains batch_size / processes rows of every batch."""
    shape, hp = spec.model.shape(), spec.hyperparameters
    vocab = vocab_size or spec.tokenizer.vocab_size
    return estimate_bytes(parameters=pretrain_parameters(spec, vocab), layers=shape.layers,
                          hidden=shape.hidden, intermediate=shape.intermediate,
                          heads=shape.heads, vocab=vocab, micro_batch=rank_micro_batch(spec),
                          sequence_length=hp.sequence_length, shards=shards(spec.resources))


def estimate_finetune_bytes(spec: FinetuneSpec, config: Any, parameters: int,
                            labels: int) -> int:
    """One process's training memory for fine-tuning a base model (config: its transformers
    config) of `parameters` parameters, the task's head for `labels` labels included."""
    return estimate_bytes(
        parameters=parameters, layers=config.num_hidden_layers, hidden=config.hidden_size,
        intermediate=getattr(config, "intermediate_size", None) or 4 * config.hidden_size,
        heads=config.num_attention_heads, vocab=labels, micro_batch=rank_micro_batch(spec),
        sequence_length=spec.hyperparameters.sequence_length, shards=shards(spec.resources))


def rank_micro_batch(spec: PretrainSpec | FinetuneSpec) -> int:
    """Rows of one forward pass in one process: a micro-batch, or a process's share of the
    batch when that is smaller."""
    hp = spec.hyperparameters
    micro = getattr(hp, "micro_batch", hp.batch_size)
    return min(micro, hp.batch_size // spec.resources.processes)
