"""transformers pipelines over exported models, loaded once and shared, plus the limits every
task applies to its input and output. Using the pipelines themselves is what makes our
answers equal to `pipeline(task, model=export_dir)` on a downloaded export."""

import threading
from collections.abc import Callable
from functools import lru_cache, partial
from itertools import chain
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from service.errors import ApiError
from service.inference.loader import ModelCache, ModelTooLarge
from service.settings import get_settings
from service.storage import get_store

T = TypeVar("T")


class Predictor:
    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.tokenizer = pipe.tokenizer
        config = pipe.model.config
        self.max_tokens: int = max_tokens(config)
        # The width of the output layer: fill-mask's top_k can be no larger.
        self.vocab_size: int = int(getattr(config, "vocab_size", 0) or len(pipe.tokenizer))
        self.nbytes = model_bytes(pipe.model)
        self.lock = threading.Lock()  # a pipeline is not safe to call from two threads


# Models whose position ids start after the padding id (fairseq's convention): their
# position table is pad_token_id + 1 rows longer than the texts they take.
OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer"}


def max_tokens(config: Any) -> int:
    """The longest input, in tokens, that the model's position table covers."""
    positions = int(getattr(config, "max_position_embeddings", 512))
    if getattr(config, "model_type", None) in OFFSET_POSITIONS:
        positions -= int(getattr(config, "pad_token_id", None) or 0) + 1
    return positions


def model_bytes(model: Any) -> int:
    """Memory a loaded model holds: its parameters (tied ones once) and buffers."""
    return sum(t.numel() * t.element_size() for t in chain(model.parameters(), model.buffers()))


@lru_cache
def _cache() -> ModelCache:
    s = get_settings()
    return ModelCache(store=get_store(), cache_dir=s.cache_dir, capacity=s.max_loaded_models,
                      max_bytes=s.model_cache_bytes, size=lambda p: p.nbytes)


def load(model_id: str, prefix: str, task: str) -> Predictor:
    def build() -> Predictor:
        from transformers import pipeline  # imported on first use: keeps API start fast

        local = _cache().local_dir(model_id, prefix)
        _cache().make_room(local)
        return Predictor(pipeline(task, model=str(local), device="cpu"))

    try:
        return _cache().get(model_id, build)
    except ModelTooLarge as exc:
        raise ApiError(422, "model_too_large",
                       f"this model needs {exc.needed} bytes of memory to serve; this server "
                       f"serves models of at most {exc.limit} bytes") from None


@lru_cache
def _threads() -> anyio.CapacityLimiter:
    return anyio.CapacityLimiter(get_settings().max_loaded_models)


async def call(func: Callable[..., T], /, **kwargs: Any) -> T:
    """Run an inference function in a thread of its own pool, one thread per model the cache
    may hold: a request waiting for a busy model waits here, holding neither a thread of the
    server's pool nor a database connection."""
    return await anyio.to_thread.run_sync(partial(func, **kwargs), limiter=_threads())


def check_text(text: str, param: str) -> None:
    """JSON may carry a lone surrogate ("\\ud800"), which no tokenizer can read."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(422, "invalid_request", f"{param}: not valid Unicode text (it holds a "
                       "lone surrogate code point)", param) from None


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
        check_text(text, "inputs")
    return texts


def check_top_k(top_k: int | None, default: int) -> int:
    limit = get_settings().max_top_k
    if top_k is not None and top_k > limit:
        raise ApiError(422, "invalid_request", f"parameters.top_k: at most {limit}",
                       "parameters.top_k")
    return top_k or default


def token_ids(predictor: Predictor, texts: list[str]) -> list[list[int]]:
    """Each text's token ids, each within the model's length."""
    ids = []
    for text in texts:
        row = predictor.tokenizer(text)["input_ids"]
        if len(row) > predictor.max_tokens:
            raise ApiError(413, "input_too_long",
                           f"inputs: a text is longer than the model's {predictor.max_tokens} "
                           "tokens", "inputs")
        ids.append(row)
    return ids


def check_outputs(count: int, what: str, param: str) -> None:
    """Refuse, before the model runs, a request whose answer would be too large."""
    limit = get_settings().max_inference_outputs
    if count > limit:
        raise ApiError(413, "too_many_outputs",
                       f"{param}: this request asks for {count} {what}; at most {limit} per "
                       "request (send fewer inputs or a smaller value)", param)


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
