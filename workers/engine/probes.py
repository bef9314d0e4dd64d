"""Cloze probes: at every eval, what the model puts in a blank (masked models) or after a
prompt (causal models), and where the expected answer ranks. A person watches the model
learn facts as training goes.

A masked model's probe has one mask ("[MASK]" or "<mask>", replaced by the model's own);
the expected word is scored by its first sub-token. A causal model's probe is a prompt;
the expected continuation is scored whole (the product of its tokens' probabilities,
teacher-forced) and ranked by its first token."""

from typing import Any

import torch

from jobspec.pretrain import MASK_SPELLINGS, Probe

TOP_K = 5


def run_probes(model: torch.nn.Module, tokenizer: Any, probes: list[Probe], *, causal: bool,
               device: torch.device) -> list[dict[str, Any]]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [(_causal if causal else _masked)(model, tokenizer, probe, device)
                    for probe in probes]
    finally:
        model.train(was_training)


def _logits(model: torch.nn.Module, ids: list[int], device: torch.device) -> torch.Tensor:
    out = model(input_ids=torch.tensor([ids], device=device))
    logits = getattr(out, "logits", None)
    if logits is None:  # BertForPreTraining (mlm_nsp)
        logits = out.prediction_logits
    return logits[0].float()


def _answer(probe: Probe, probs: torch.Tensor, expected: int | None, tokenizer: Any,
            probability: float | None = None) -> dict[str, Any]:
    values, ids = probs.topk(min(TOP_K, probs.numel()))
    p = float(probs[expected]) if expected is not None else 0.0
    return {"text": probe.text, "expected": probe.expected,
            "rank": int((probs > p).sum()) + 1 if expected is not None else None,
            "probability": p if probability is None else probability,
            "top": [{"token": tokenizer.decode([i]).strip(), "probability": float(v)}
                    for v, i in zip(values.tolist(), ids.tolist(), strict=True)]}


def _masked(model: torch.nn.Module, tokenizer: Any, probe: Probe,
            device: torch.device) -> dict[str, Any]:
    text = probe.text
    for spelling in MASK_SPELLINGS:
        text = text.replace(spelling, tokenizer.mask_token)
    ids = tokenizer(text, truncation=True)["input_ids"]
    if tokenizer.mask_token_id not in ids:  # cut off by truncation
        return {"text": probe.text, "expected": probe.expected, "rank": None,
                "probability": None, "top": []}
    at = ids.index(tokenizer.mask_token_id)
    probs = _logits(model, ids, device)[at].softmax(-1)
    expected = tokenizer(probe.expected, add_special_tokens=False)["input_ids"]
    return _answer(probe, probs, expected[0] if expected else None, tokenizer)


def _causal(model: torch.nn.Module, tokenizer: Any, probe: Probe,
            device: torch.device) -> dict[str, Any]:
    prompt = _without_end(tokenizer, tokenizer(probe.text)["input_ids"])
    joiner = "" if probe.text.endswith((" ", "\n")) else " "
    whole = _without_end(tokenizer, tokenizer(probe.text + joiner + probe.expected)["input_ids"])
    if whole[:len(prompt)] == prompt:
        continuation = whole[len(prompt):]
    else:  # the tokenizer merged across the join: score the continuation on its own
        continuation = tokenizer(joiner + probe.expected, add_special_tokens=False)["input_ids"]
    continuation = _without_end(tokenizer, continuation)
    ids = prompt + continuation
    logits = _logits(model, ids, device)
    first = logits[len(prompt) - 1].softmax(-1)
    probability = 1.0
    for k, token in enumerate(continuation):
        probability *= float(logits[len(prompt) - 1 + k].softmax(-1)[token])
    return _answer(probe, first, continuation[0] if continuation else None, tokenizer,
                   probability if continuation else 0.0)


def _without_end(tokenizer: Any, ids: list[int]) -> list[int]:
    """Ids less the special tokens a tokenizer may append (an end of text would sit between
    the prompt and its continuation)."""
    special = set(tokenizer.all_special_ids)
    while len(ids) > 1 and ids[-1] in special:
        ids = ids[:-1]
    return ids
