"""Exported models loaded once per process and shared (service/inference/served.py), plus the
limits every task applies to its input and output. The transformers pipeline of each model
does the pre- and post-processing, which keeps our answers equal to
`pipeline(task, model=export_dir)` on a downloaded export."""

import asyncio
import os
from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from jobspec.pooling import read_pooling
from service.domain.refusals import Invalid, TooLarge, Unavailable
from service.inference.batcher import Overloaded
from service.inference.loader import ModelCache, ModelTooLarge, tokenizer_bytes
from service.inference.served import FEATURE_EXTRACTION, Seq, Served
from service.settings import get_settings
from service.storage import get_store
from service.transformers_import import transformers

T = TypeVar("T")


@lru_cache
def _cache() -> ModelCache:
    s = get_settings()
    return ModelCache(store=get_store(), cache_dir=s.cache_dir, capacity=s.max_loaded_models,
                      max_bytes=s.model_cache_bytes, size=lambda p: p.nbytes,
                      close=lambda p: p.close())


@lru_cache
def _set_threads() -> None:
    """Tensor threads for this (API) process, once: one per CPU it may use by default."""
    import torch

    wanted = get_settings().inference_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(wanted)


# Texts that warm a model up (and check bf16 against fp32 for fill-mask): a few lengths.
WARM_UP_TEXTS = ["The capital of France is {mask}.",
          "{mask} quick brown fox jumps over the lazy dog near the river bank.",
          "我们今天在北京的{mask}学里学习语言模型。",
          "In the morning the {mask} rose over the hills, and the village woke to the sound of "
          "bells, carts and voices in the market square."]


def _warm_up_seqs(served: Served) -> list[Seq]:
    import torch

    mask = served.tokenizer.mask_token or ""
    seqs = []
    for text in WARM_UP_TEXTS:
        ids = served.tokenizer(text.format(mask=mask), truncation=True,
                               max_length=served.max_tokens)["input_ids"]
        select = [i for i, t in enumerate(ids) if t == served.tokenizer.mask_token_id]
        seqs.append(Seq({"input_ids": torch.tensor(ids)}, select or [0]))
    return seqs


EMBEDDINGS = "#embeddings"  # the cache key's suffix for a model's embeddings copy


def cache_key(model_id: str, task: str) -> str:
    """A model is loaded once for its own task and, when asked for embeddings, once more
    as its base model (any model serves embeddings: a fill-mask model's encoder is its
    base): the two are cached apart."""
    return f"{model_id}{EMBEDDINGS}" if task == FEATURE_EXTRACTION else model_id


def loaded(model_id: str, task: str | None = None) -> Served | None:
    """The model when this process has it loaded already (no thread hop needed)."""
    return _cache().peek(cache_key(model_id, task or ""))


def load(model_id: str, prefix: str, task: str) -> Served:
    """The model, loaded (and warmed up) on first use; blocking: call it in a thread."""
    def build() -> Served:
        pipeline = transformers().pipeline  # imported on first use: keeps API start fast
        _set_threads()
        local = _cache().local_dir(model_id, prefix)
        _cache().make_room(local)
        try:
            pooling = read_pooling(local) if task == FEATURE_EXTRACTION else None
        except ValueError as exc:  # checked at import; a model trained here writes them
            raise Invalid("invalid_model", f"the model's pooling files: {exc}") from None
        if task == "question-answering":  # transformers 5 has no pipeline for it
            from service.inference.question_answering import reader

            pipe: Any = reader(local)
        else:
            pipe = pipeline(task, model=str(local), device="cpu")
        served = Served(pipe, task, get_settings(), pooling, tokenizer_bytes(local))
        served.prepare(get_settings(), _warm_up_seqs(served))
        return served

    try:
        return _cache().get(cache_key(model_id, task), build)
    except ModelTooLarge as exc:
        raise Invalid("model_too_large",
                      f"this model needs {exc.needed} bytes of memory to serve; this server "
                      f"serves models of at most {exc.limit} bytes") from None


async def load_async(model_id: str, prefix: str, task: str) -> Served:
    served = loaded(model_id, task)
    if served is None:
        served = await call(load, model_id=model_id, prefix=prefix, task=task)
    return served


async def infer(served: Served, seqs: list[Seq]) -> list[Any]:
    """Run the sequences in the model's batches; waiting holds no thread. A full queue is
    Unavailable, retry after a second (the load is shed, not queued without bound)."""
    assert served.batcher is not None
    if len(seqs) > served.batcher.max_queue:  # could never fit, however long one waits
        raise TooLarge("too_many_sequences", f"inputs: this request needs {len(seqs)} "
                       f"passes of the model (texts, windows of long texts, sub-tokens of "
                       f"targets); at most {served.batcher.max_queue}", "inputs")
    try:
        futures = served.batcher.submit(seqs)
    except Overloaded as exc:
        raise Unavailable("overloaded", f"this model is busy ({exc}); retry shortly",
                          retry_after_s=1) from None
    return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))


# Tokenizing or decoding this much (characters in, or predictions out) takes well under a
# millisecond: less than a trip to a worker thread costs the event loop, so it runs there.
INLINE_WORK = 1000


async def in_thread(func: Callable[..., T], /, *args: Any, work: int | None = None) -> T:
    """Short CPU work (tokenizing, decoding) off the event loop, unless `work` says it is
    smaller than the trip to a thread."""
    if work is not None and work <= INLINE_WORK:
        return func(*args)
    return await anyio.to_thread.run_sync(partial(func, *args))


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
        raise Invalid("invalid_request", f"{param}: not valid Unicode text (it holds a "
                      "lone surrogate code point)", param) from None


def texts_of(inputs: str | list[str], param: str = "inputs") -> list[str]:
    """The request's texts, checked against the count and length limits (`param`: where
    the request holds them)."""
    settings = get_settings()
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not texts:
        raise Invalid("invalid_request", f"{param}: give at least one text", param)
    if len(texts) > settings.max_inference_inputs:
        raise TooLarge("too_many_inputs",
                       f"{param}: at most {settings.max_inference_inputs} texts per request",
                       param)
    for text in texts:
        if len(text) > settings.max_inference_chars:
            raise TooLarge("input_too_long",
                           f"{param}: each text may hold at most {settings.max_inference_chars} "
                           "characters", param)
        check_text(text, param)
    return texts


def check_top_k(top_k: int | None, default: int) -> int:
    limit = get_settings().max_top_k
    if top_k is not None and top_k > limit:
        raise Invalid("invalid_request", f"parameters.top_k: at most {limit}",
                      "parameters.top_k")
    return top_k or default


def token_ids(served: Served, texts: list[str], param: str = "inputs") -> list[list[int]]:
    """Each text's token ids, each within the model's length."""
    ids = []
    for text in texts:
        with served.tokenizing:
            row = served.tokenizer(text)["input_ids"]
        if len(row) > served.max_tokens:
            raise TooLarge("input_too_long",
                           f"{param}: a text is longer than the model's {served.max_tokens} "
                           "tokens", param)
        ids.append(row)
    return ids


def check_outputs(count: int, what: str, param: str) -> None:
    """Refuse, before the model runs, a request whose answer would be too large."""
    limit = get_settings().max_inference_outputs
    if count > limit:
        raise TooLarge("too_many_outputs",
                       f"{param}: this request asks for {count} {what}; at most {limit} per "
                       "request (send fewer inputs or a smaller value)", param)
