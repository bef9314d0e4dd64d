"""Fill-mask in the Hugging Face Inference API format, answered by transformers' own pipeline.

Using the pipeline itself (not a re-implementation) is what makes our answers equal to
`pipeline("fill-mask", model=export_dir)` on the downloaded export.
"""

import threading
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.errors import ApiError
from service.inference.loader import ModelCache
from service.settings import get_settings
from service.storage import get_store


class FillMaskParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")
    top_k: int | None = Field(default=None, ge=1)
    targets: str | list[str] | None = None


class FillMaskRequest(BaseModel):
    # HF clients may add keys such as "options"; they are accepted and ignored.
    model_config = ConfigDict(extra="ignore")
    inputs: str | list[str]
    parameters: FillMaskParameters | None = None


class Predictor:
    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.mask_token: str = pipe.tokenizer.mask_token
        self.max_tokens: int = int(getattr(pipe.model.config, "max_position_embeddings", 512))
        self.lock = threading.Lock()  # a pipeline is not safe to call from two threads


@lru_cache
def _cache() -> ModelCache:
    s = get_settings()
    return ModelCache(store=get_store(), cache_dir=s.cache_dir, capacity=s.max_loaded_models)


def _load(model_id: str, prefix: str) -> Predictor:
    def build() -> Predictor:
        from transformers import pipeline  # imported on first use: keeps API start fast

        return Predictor(pipeline("fill-mask", model=str(_cache().local_dir(model_id, prefix)),
                                  device="cpu"))

    return _cache().get(model_id, build)


def fill_mask(*, model_id: str, prefix: str, request: FillMaskRequest) -> Any:
    settings = get_settings()
    texts = [request.inputs] if isinstance(request.inputs, str) else request.inputs
    if not texts:
        raise ApiError(422, "invalid_request", "inputs: give at least one text", "inputs")
    if len(texts) > settings.max_inference_inputs:
        raise ApiError(413, "too_many_inputs",
                       f"inputs: at most {settings.max_inference_inputs} texts per request",
                       "inputs")
    for text in texts:
        if len(text) > settings.max_inference_chars:
            raise ApiError(413, "input_too_long",
                           f"inputs: each text may hold at most {settings.max_inference_chars} "
                           "characters", "inputs")
    params = request.parameters or FillMaskParameters()
    targets = [params.targets] if isinstance(params.targets, str) else params.targets
    if targets is not None and (not targets or len(targets) > settings.max_top_k
                                or not all(t.strip() for t in targets)):
        raise ApiError(422, "invalid_request",
                       f"parameters.targets: give 1 to {settings.max_top_k} non-empty strings",
                       "parameters.targets")
    top_k = params.top_k or 5
    if top_k > settings.max_top_k:
        raise ApiError(422, "invalid_request",
                       f"parameters.top_k: at most {settings.max_top_k}", "parameters.top_k")

    predictor = _load(model_id, prefix)
    tokenizer = predictor.pipe.tokenizer
    for text in texts:
        if predictor.mask_token not in text:
            raise ApiError(422, "no_mask_token",
                           f"inputs: no mask token found in the input; this model's mask token "
                           f"is {predictor.mask_token}", "inputs")
        if len(tokenizer(text)["input_ids"]) > predictor.max_tokens:
            raise ApiError(413, "input_too_long",
                           f"inputs: a text is longer than the model's {predictor.max_tokens} "
                           "tokens", "inputs")
    with predictor.lock:
        try:
            result = predictor.pipe(request.inputs, top_k=top_k, targets=targets)
        except ValueError as exc:  # e.g. targets that tokenize to nothing
            raise ApiError(422, "invalid_request", f"parameters: {exc}", "parameters") from None
    return result
