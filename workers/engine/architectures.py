"""Model shapes -> transformers configs and models, for every architecture and objective.

The models are transformers' own classes, so an export loads with no code of ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    BertForPreTraining,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    RobertaConfig,
    RobertaForMaskedLM,
)

from jobspec import ModelSpec
from jobspec.model_dir import check_model_dir
from jobspec.sizing import ROBERTA_POSITION_OFFSET
from workers.engine.failures import ConfigError, EngineError

# Peak dense bf16 FLOP/s by GPU name (substring, first match wins), for MFU. Sparsity-free
# figures from the vendors' data sheets.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
)


def model_config(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, dropout: float
                 ) -> PretrainedConfig:
    """The transformers config of a fresh model of this shape, for this tokenizer."""
    shape, arch = spec.shape(), spec.architecture
    vocab, positions = len(tokenizer), spec.max_position_embeddings
    pad, bos, eos = tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
    if arch in ("bert", "roberta"):
        cls = BertConfig if arch == "bert" else RobertaConfig
        extra = {} if arch == "bert" else {"bos_token_id": bos, "eos_token_id": eos,
                                           "type_vocab_size": 1}
        return cls(vocab_size=vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                   num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                   max_position_embeddings=positions + (ROBERTA_POSITION_OFFSET
                                                        if arch == "roberta" else 0),
                   hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                   pad_token_id=pad, tie_word_embeddings=spec.ties_embeddings(), **extra)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=shape.hidden, n_layer=shape.layers,
                          n_head=shape.heads, n_inner=shape.intermediate, n_positions=positions,
                          resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                          bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
                          tie_word_embeddings=spec.ties_embeddings())
    if arch == "llama":
        # RoPE, RMSNorm and SwiGLU come with transformers' Llama; input and output
        # embeddings tied by default, as small Llamas (3.2 1B) do: a large share of a
        # small model.
        return LlamaConfig(vocab_size=vocab, hidden_size=shape.hidden,
                           num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                           num_key_value_heads=shape.kv_heads,
                           intermediate_size=shape.intermediate,
                           max_position_embeddings=positions, attention_dropout=dropout,
                           tie_word_embeddings=spec.ties_embeddings(), bos_token_id=bos,
                           eos_token_id=eos, pad_token_id=pad)
    raise ConfigError(f"unknown architecture {arch!r}")


MODEL_CLASSES: dict[tuple[str, str], type[PreTrainedModel]] = {
    ("bert", "mlm"): BertForMaskedLM,
    ("bert", "mlm_nsp"): BertForPreTraining,
    ("roberta", "mlm"): RobertaForMaskedLM,
    ("gpt2", "clm"): GPT2LMHeadModel,
    ("llama", "clm"): LlamaForCausalLM,
}


def build_model(spec: ModelSpec, objective: str, tokenizer: PreTrainedTokenizerBase, *,
                seed: int, attention: str, dropout: float) -> PreTrainedModel:
    """A freshly initialised model; the seed makes the initial weights reproducible."""
    try:
        cls = MODEL_CLASSES[(spec.architecture, objective)]
    except KeyError:
        raise ConfigError(f"{objective} cannot train {spec.architecture}") from None
    torch.manual_seed(seed)
    config = model_config(spec, tokenizer, dropout)
    # Training-time choice only: config.json does not record it, so the export is unaffected.
    config._attn_implementation = attention
    return freeze_unused(cls(config))


def freeze_unused(model: PreTrainedModel) -> PreTrainedModel:
    """Untied, a BERT or RoBERTa masked-LM head keeps the bias it would share with its
    decoder as a parameter no forward pass reads (transformers ties the two only with the
    embeddings). Frozen, it takes no optimizer state (which a sharded resume would expect of
    every trained parameter); it is still saved, and loads as it is."""
    for module in model.modules():
        decoder, bias = getattr(module, "decoder", None), getattr(module, "bias", None)
        if isinstance(decoder, torch.nn.Linear) and isinstance(bias, torch.nn.Parameter) \
                and decoder.bias is not bias:
            bias.requires_grad_(False)
    return model


def check_confined(directory: str | Path) -> None:
    """Refuse a base model whose files name paths outside its folder (an index's
    weight_map entry "../../other/model.safetensors" would load another owner's weights)."""
    try:
        check_model_dir(directory)
    except ValueError as exc:
        raise ConfigError(f"the base model cannot be loaded: {exc}") from None


def load_model(directory: str | Path, objective: str, *, attention: str,
               dropout: float | None, seed: int = 0) -> tuple[PreTrainedModel, list[str]]:
    """A base model from an export, with the head its objective trains (continued
    pretraining), and what a user should know of how it was loaded (for the job's events).

    A BERT exported by mlm_nsp keeps its NSP head when continued by mlm_nsp; any other
    base gets the objective's head, with the base's weights where they fit. A base without
    a head (BertModel, GPT2Model, LlamaModel, a sentence-transformers encoder; its weights
    named with or without the "bert." prefix) gets a new one, initialised randomly, except
    for an output layer that its config ties to the input embeddings (tie_word_embeddings,
    true by default for BERT and GPT-2): that one is the embeddings, as the architecture has
    it. The seed makes the new weights reproducible, and the same in every process of a
    multi-process job (each builds its own copy).
    """
    check_confined(directory)
    try:
        config = AutoConfig.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot read the base model's config: {exc}") from None
    if dropout is not None:
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "resid_pdrop",
                     "embd_pdrop", "attn_pdrop", "attention_dropout"):
            if isinstance(getattr(config, name, None), float):
                setattr(config, name, dropout)
    auto: Any = {"mlm": AutoModelForMaskedLM, "clm": AutoModelForCausalLM,
                 "mlm_nsp": BertForPreTraining}[objective]
    torch.manual_seed(seed)  # the weights the base model lacks (a new head)
    try:
        model, info = auto.from_pretrained(str(directory), config=config, use_safetensors=True,
                                           attn_implementation=attention,
                                           output_loading_info=True)
    except (OSError, ValueError, KeyError) as exc:
        raise EngineError(f"cannot load the base model for {objective}: {exc}") from None
    return freeze_unused(model), _loading_notes(model, info)


def new_weights(model: torch.nn.Module, missing: set[str]) -> list[str]:
    """The smallest list of module and parameter names covering the parameters that were
    not in the checkpoint (newly initialised), each shared parameter named once:
    ["cls.predictions.transform", "cls.predictions.bias"] for a BertForMaskedLM loaded from
    a BertModel (its decoder's bias is cls.predictions.bias)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    fresh = {name for name in params if name in missing}
    if not fresh:
        return []
    whole = set(fresh)  # modules all of whose parameters are new, and those parameters
    for name, module in model.named_modules():
        inside = [f"{name}.{p}" if name else p
                  for p, _ in module.named_parameters(remove_duplicate=False)]
        if name and inside and all(p in fresh for p in inside):
            whole.add(name)
    names: list[str] = []
    seen: set[int] = set()
    for name in sorted(whole, key=lambda n: (n.count("."), n)):
        if any(name.startswith(kept + ".") for kept in names):
            continue
        tensors = {id(params[p]) for p in params if p == name or p.startswith(name + ".")}
        if tensors <= seen:  # a parameter shared with one already named
            continue
        seen |= tensors
        names.append(name)
    return sorted(names)


def _loading_notes(model: PreTrainedModel, info: dict[str, Any]) -> list[str]:
    notes = []
    fresh = new_weights(model, set(info.get("missing_keys") or ()))
    if fresh:
        notes.append(f"new weights, not in the base model, initialised from the seed: "
                     f"{', '.join(fresh)}")
    output, inputs = model.get_output_embeddings(), model.get_input_embeddings()
    if isinstance(output, torch.nn.Module):
        name = next((n for n, m in model.named_modules() if m is output), "the output layer")
        tied = getattr(output, "weight", None) is inputs.weight
        notes.append(f"the output layer {name} is tied to the input embeddings"
                     if tied else f"the output layer {name} has its own weights (not tied to "
                     "the input embeddings)")
    unused = sorted({key.rsplit(".", 1)[0] for key in info.get("unexpected_keys") or ()})
    if unused:
        notes.append(f"base weights {type(model).__name__} has no place for (not trained, "
                     f"not exported): {', '.join(unused)}")
    return notes


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied input/output embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def flops_per_token(model: torch.nn.Module, sequence_length: int) -> float:
    """Training FLOPs per token: 6 x non-embedding parameters + attention (PaLM's count).
    An untied output layer counts as an embedding too, so a model's figure does not depend
    on the tying."""
    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    output = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None
    if output is not None and not any(output.weight is t.weight for t in tables):
        tables.append(output)
    embeddings = sum(p.numel() for m in tables for p in m.parameters(recurse=False))
    config: Any = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", 0)
    hidden = getattr(config, "hidden_size", 0)
    attention = 12 * layers * hidden * sequence_length
    return float(6 * (count_parameters(model) - embeddings) + attention)


def peak_flops(device: torch.device) -> float | None:
    """The GPU's peak dense bf16 FLOP/s, if it is in the table."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def describe(model: PreTrainedModel) -> str:
    """'4 layers, hidden 256, 4 heads' for the event log."""
    c: Any = model.config
    return (f"{c.num_hidden_layers} layers, hidden {c.hidden_size}, "
            f"{c.num_attention_heads} heads")
