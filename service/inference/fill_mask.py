"""Fill-mask in the Hugging Face Inference API format: a flat list for one input with one
mask, a list of lists for several masks or several inputs.

Each text is tokenized once; its mask positions go to the model's batches (the MLM head runs
on them alone) and the answer is built as transformers' FillMaskPipeline builds it, so the
two agree token for token. One difference, on purpose: a target that the vocabulary spells
with several sub-tokens is scored as a whole word, by the chain rule (the mask widened to
one mask per sub-token, filled left to right: P(t1) x P(t2 | t1) x ...; one more forward pass
per sub-token), where the pipeline scores its first sub-token alone. Its `token` is then the
first sub-token's id and `token_str` the whole target.
"""

from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from service.domain.refusals import Invalid, TooLarge
from service.inference.pipelines import (
    check_outputs,
    check_text,
    check_top_k,
    in_thread,
    infer,
    load_async,
    texts_of,
)
from service.inference.served import Seq, Served
from service.settings import get_settings

# A target longer than this many sub-tokens is refused: each one costs a forward pass.
MAX_TARGET_TOKENS = 8


class FillMaskParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")
    top_k: int | None = Field(default=None, ge=1)
    targets: str | list[str] | None = None


class FillMaskRequest(BaseModel):
    # HF clients may add keys such as "options"; they are accepted and ignored.
    model_config = ConfigDict(extra="ignore")
    inputs: str | list[str]
    parameters: FillMaskParameters | None = None


@dataclass
class Plan:
    """A checked, tokenized request."""
    ids: list[list[int]]
    masks: list[list[int]]  # each text's mask positions
    top_k: int
    singles: list[int] | None = None  # target ids (None: no targets, the whole vocabulary)
    multis: list[tuple[int, ...]] = field(default_factory=list)  # several-sub-token targets


@dataclass
class Chain:
    """One several-sub-token target at one mask, scored one sub-token per pass."""
    text: int
    mask: int
    target: tuple[int, ...]
    ids: list[int]
    score: float = 1.0


async def fill_mask(*, model_id: str, prefix: str, request: FillMaskRequest) -> Any:
    served = await load_async(model_id, prefix, "fill-mask")
    texts = [request.inputs] if isinstance(request.inputs, str) else request.inputs
    plan = await in_thread(make_plan, served, request, work=sum(map(len, texts)))
    rows = await infer(served, [Seq({"input_ids": torch.tensor(ids)}, masks)
                                for ids, masks in zip(plan.ids, plan.masks, strict=True)])
    chains = await score_chains(served, plan)
    # Each prediction is a whole sequence decoded: ~50 characters of work.
    outputs = plan.top_k * sum(map(len, plan.masks))
    return await in_thread(answer, served, plan, rows, chains, isinstance(request.inputs, str),
                           work=outputs * 50)


def make_plan(served: Served, request: FillMaskRequest) -> Plan:
    """The answer holds top_k predictions, each with the whole filled-in sequence, for every
    mask of every input: the counts are checked before the model runs."""
    settings = get_settings()
    limit = settings.max_top_k
    texts = texts_of(request.inputs)
    params = request.parameters or FillMaskParameters()
    targets = [params.targets] if isinstance(params.targets, str) else params.targets
    if targets is not None and (not targets or len(targets) > limit
                                or not all(t.strip() for t in targets)):
        raise Invalid("invalid_request",
                      f"parameters.targets: give 1 to {limit} non-empty strings",
                      "parameters.targets")
    for target in targets or []:
        check_text(target, "parameters.targets")
    top_k = check_top_k(params.top_k, 5)
    tokenizer = served.tokenizer
    no_mask = Invalid("no_mask_token", "inputs: no mask token found in the input; this "
                      f"model's mask token is {tokenizer.mask_token}", "inputs")
    if any(tokenizer.mask_token not in text for text in texts):
        raise no_mask
    if targets is None and top_k > served.vocab_size:
        raise Invalid("invalid_request", f"parameters.top_k: at most "
                      f"{served.vocab_size}, this model's vocabulary size",
                      "parameters.top_k")
    with served.tokenizing:
        ids: list[list[int]] = tokenizer(texts)["input_ids"]
    mask_id = tokenizer.mask_token_id  # a property lookup each time: once, not per token
    masks = [[i for i, t in enumerate(row) if t == mask_id] for row in ids]
    if min(len(m) for m in masks) == 0:
        raise no_mask
    if max(len(m) for m in masks) > settings.max_masks_per_input:
        raise TooLarge("too_many_masks", f"inputs: at most "
                       f"{settings.max_masks_per_input} mask tokens per text", "inputs")
    for row, positions in zip(ids, masks, strict=True):
        if len(row) > served.max_tokens:
            where = ("a mask token is past them, outside the window the model reads"
                     if positions[-1] >= served.max_tokens - 1 else "texts are not cut")
            raise TooLarge("input_too_long", f"inputs: a text of {len(row)} tokens is "
                           f"longer than the model's {served.max_tokens} tokens; {where}",
                           "inputs")
    plan = Plan(ids, masks, top_k)
    if targets is not None:
        with served.tokenizing:
            plan.singles, plan.multis = target_ids(served, targets)
        per_mask = min(top_k, len(plan.singles) + len(plan.multis))
        passes = sum(len(m) for m in masks) * sum(len(t) for t in plan.multis)
        check_outputs(passes, "forward passes (masks x sub-tokens of the targets)",
                      "parameters.targets")
        longest = max((len(t) for t in plan.multis), default=1)
        if max(len(row) for row in ids) + longest - 1 > served.max_tokens:
            raise TooLarge("input_too_long", "parameters.targets: a text with a target "
                           f"in place of its mask is longer than the model's "
                           f"{served.max_tokens} tokens", "parameters.targets")
    else:
        per_mask = top_k
    check_outputs(sum(len(m) for m in masks) * per_mask, "predictions (masks x top_k)",
                  "parameters.top_k")
    return plan


def target_ids(served: Served, targets: list[str]) -> tuple[list[int], list[tuple[int, ...]]]:
    """As the pipeline reads targets (a vocabulary entry as is, else the text tokenized),
    except that a target of several sub-tokens is kept whole."""
    singles: list[int] = []
    multis: list[tuple[int, ...]] = []
    for target in targets:
        id_ = served.vocab.get(target)
        pieces = [id_] if id_ is not None else served.tokenizer(
            target, add_special_tokens=False)["input_ids"]
        if len(pieces) > MAX_TARGET_TOKENS:
            raise Invalid("invalid_request", f"parameters.targets: {target!r} is "
                          f"{len(pieces)} sub-tokens; at most {MAX_TARGET_TOKENS}",
                          "parameters.targets")
        if len(pieces) == 1:
            singles.append(pieces[0])
        elif pieces:
            multis.append(tuple(pieces))
    singles = list(set(singles))  # the pipeline's order, which decides between equal scores
    multis = list(dict.fromkeys(multis))
    if not singles and not multis:
        raise Invalid("invalid_request", "parameters.targets: none of the targets is "
                      "in this model's vocabulary", "parameters.targets")
    return singles, multis


async def score_chains(served: Served, plan: Plan) -> dict[tuple[int, int, tuple[int, ...]],
                                                           Chain]:
    """Every several-sub-token target at every mask, all chains' k-th passes in one batch."""
    mask_id = served.tokenizer.mask_token_id
    chains = [Chain(t, pos, target, row[:pos] + [mask_id] * len(target) + row[pos + 1:])
              for t, (row, positions) in enumerate(zip(plan.ids, plan.masks, strict=True))
              for pos in positions for target in plan.multis]
    step = 0
    while active := [c for c in chains if step < len(c.target)]:
        rows = await infer(served, [Seq({"input_ids": torch.tensor(c.ids)}, [c.mask + step])
                                    for c in active])
        for chain, row in zip(active, rows, strict=True):
            chain.score *= float(row[0, chain.target[step]])
            chain.ids[chain.mask + step] = chain.target[step]
        step += 1
    return {(c.text, c.mask, c.target): c for c in chains}


def answer(served: Served, plan: Plan, rows: list[torch.Tensor],
           chains: dict[tuple[int, int, tuple[int, ...]], Chain], one_text: bool) -> Any:
    """Each mask's top_k, as FillMaskPipeline.postprocess writes them."""
    tokenizer = served.tokenizer
    pad_id = tokenizer.pad_token_id  # a property lookup each time: once, not per token
    if plan.singles is not None:  # the same for every mask of the request
        candidates = torch.tensor(plan.singles, dtype=torch.long)
        top = min(plan.top_k, len(plan.singles) + len(plan.multis))
    results: list[Any] = []
    for t, (ids, positions) in enumerate(zip(plan.ids, plan.masks, strict=True)):
        probs = rows[t]
        single_mask = len(positions) == 1
        per_mask = []
        for i, pos in enumerate(positions):
            picks: list[tuple[float, tuple[int, ...]]]
            if plan.singles is None:
                values, predictions = probs[i].topk(plan.top_k)
                picks = [(v, (p,)) for v, p in zip(values.tolist(), predictions.tolist(),
                                                    strict=True)]
            else:
                values, order = probs[i, candidates].topk(min(top, len(plan.singles)))
                picks = [(v, (plan.singles[o],)) for v, o in zip(values.tolist(),
                                                                 order.tolist(), strict=True)]
                picks += [(chains[(t, pos, m)].score, m) for m in plan.multis]
                picks = sorted(picks, key=lambda pick: -pick[0])[:top]
            row = []
            for score, pieces in picks:
                tokens = [x for x in ids[:pos] + list(pieces) + ids[pos + 1:]
                          if x != pad_id]
                row.append({"score": score, "token": pieces[0],
                            "token_str": tokenizer.decode(list(pieces)),
                            "sequence": tokenizer.decode(tokens,
                                                         skip_special_tokens=single_mask)})
            per_mask.append(row)
        results.append(per_mask[0] if single_mask else per_mask)
    return results[0] if one_text else results
