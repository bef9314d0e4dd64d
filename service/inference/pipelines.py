"""transformers pipelines over exported models, loaded once and shared, plus the input
limits every task applies. Using the pipelines themselves is what makes our answers equal
to `pipeline(task, model=export_dir)` on a downloaded export."""

import threading
from functools import lru_cache
from typing import Any

from service.errors import ApiError
from service.inference.loader import ModelCache
from service.settings import get_settings
from service.storage import get_store


class Predictor:
    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.tokenizer = pipe.tokenizer
        self.max_tokens: int = int(getattr(pipe.model.config, "max_position_embeddings", 512))
        self.lock = threading.Lock()  # a pipeline is not safe to call from two threads


@lru_cache
def _cache() -> ModelCache:
    s = get_settings()
    return ModelCache(store=get_store(), cache_dir=s.cache_dir, capacity=s.max_loaded_models)


def load(model_id: str, prefix: str, task: str) -> Predictor:
    def build() -> Predictor:
        from transformers import pipeline  # imported on first use: keeps API start fast

        local = str(_cache().local_dir(model_id, prefix))
        return Predictor(pipeline(task, model=local, device="cpu"))

    return _cache().get(model_id, build)


def texts_of(inputs: str | list[str]) -> list[str]:
    """The request's texts, checked against the count and length limits."""
    settings = get_settings()
    texts = [inputs] if isinstance(inputs, str) else inputs
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
    return texts


def check_top_k(top_k: int | None, default: int) -> int:
    limit = get_settings().max_top_k
    if top_k is not None and top_k > limit:
        raise ApiError(422, "invalid_request", f"parameters.top_k: at most {limit}",
                       "parameters.top_k")
    return top_k or default


def check_token_length(predictor: Predictor, texts: list[str]) -> None:
    for text in texts:
        if len(predictor.tokenizer(text)["input_ids"]) > predictor.max_tokens:
            raise ApiError(413, "input_too_long",
                           f"inputs: a text is longer than the model's {predictor.max_tokens} "
                           "tokens", "inputs")


def run(predictor: Predictor, inputs: Any, seed: int | None = None, **kwargs: Any) -> Any:
    """Call the pipeline under its lock; a seed makes sampling repeatable (set under the same
    lock, so no other request's call comes between the seed and this one)."""
    with predictor.lock:
        if seed is not None:
            import torch

            torch.manual_seed(seed)
        try:
            return predictor.pipe(inputs, **kwargs)
        except ValueError as exc:  # e.g. targets that tokenize to nothing
            raise ApiError(422, "invalid_request", f"parameters: {exc}", "parameters") from None
