"""Fill-mask in the Hugging Face Inference API format: a flat list for one input with one
mask, a list of lists for several masks or several inputs."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.errors import ApiError
from service.inference.pipelines import (
    check_outputs,
    check_text,
    check_top_k,
    load,
    run,
    texts_of,
    token_ids,
)
from service.settings import get_settings


class FillMaskParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")
    top_k: int | None = Field(default=None, ge=1)
    targets: str | list[str] | None = None


class FillMaskRequest(BaseModel):
    # HF clients may add keys such as "options"; they are accepted and ignored.
    model_config = ConfigDict(extra="ignore")
    inputs: str | list[str]
    parameters: FillMaskParameters | None = None


def fill_mask(*, model_id: str, prefix: str, request: FillMaskRequest) -> Any:
    """The answer holds top_k predictions, each with the whole filled-in sequence, for every
    mask of every input: the counts are checked before the model runs."""
    settings = get_settings()
    limit = settings.max_top_k
    texts = texts_of(request.inputs)
    params = request.parameters or FillMaskParameters()
    targets = [params.targets] if isinstance(params.targets, str) else params.targets
    if targets is not None and (not targets or len(targets) > limit
                                or not all(t.strip() for t in targets)):
        raise ApiError(422, "invalid_request",
                       f"parameters.targets: give 1 to {limit} non-empty strings",
                       "parameters.targets")
    for target in targets or []:
        check_text(target, "parameters.targets")
    top_k = check_top_k(params.top_k, 5)
    predictor = load(model_id, prefix, "fill-mask")
    mask = predictor.tokenizer.mask_token
    no_mask = ApiError(422, "no_mask_token", "inputs: no mask token found in the input; this "
                       f"model's mask token is {mask}", "inputs")
    if any(mask not in text for text in texts):
        raise no_mask
    if targets is None and top_k > predictor.vocab_size:
        raise ApiError(422, "invalid_request", f"parameters.top_k: at most "
                       f"{predictor.vocab_size}, this model's vocabulary size",
                       "parameters.top_k")
    masks = [row.count(predictor.tokenizer.mask_token_id)
             for row in token_ids(predictor, texts)]
    if min(masks) == 0:
        raise no_mask
    if max(masks) > settings.max_masks_per_input:
        raise ApiError(413, "too_many_masks", f"inputs: at most "
                       f"{settings.max_masks_per_input} mask tokens per text", "inputs")
    per_mask = min(top_k, len(targets)) if targets else top_k
    check_outputs(sum(masks) * per_mask, "predictions (masks x top_k)", "parameters.top_k")
    return run(predictor, request.inputs, top_k=top_k, targets=targets)
