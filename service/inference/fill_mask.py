"""Fill-mask in the Hugging Face Inference API format: a flat list for one input with one
mask, a list of lists for several masks or several inputs."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.errors import ApiError
from service.inference.pipelines import check_token_length, check_top_k, load, run, texts_of
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
    limit = get_settings().max_top_k
    texts = texts_of(request.inputs)
    params = request.parameters or FillMaskParameters()
    targets = [params.targets] if isinstance(params.targets, str) else params.targets
    if targets is not None and (not targets or len(targets) > limit
                                or not all(t.strip() for t in targets)):
        raise ApiError(422, "invalid_request",
                       f"parameters.targets: give 1 to {limit} non-empty strings",
                       "parameters.targets")
    top_k = check_top_k(params.top_k, 5)
    predictor = load(model_id, prefix, "fill-mask")
    mask = predictor.tokenizer.mask_token
    for text in texts:
        if mask not in text:
            raise ApiError(422, "no_mask_token",
                           f"inputs: no mask token found in the input; this model's mask token "
                           f"is {mask}", "inputs")
    check_token_length(predictor, texts)
    return run(predictor, request.inputs, top_k=top_k, targets=targets)
