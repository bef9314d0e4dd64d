"""Which models this process serves, and how a request reaches one: the lookup of a model for
a task (and the short-lived cache of lookups), loading a model with a warm-up request, and
forgetting a deleted one. The loaded models themselves sit in pipelines' ModelCache.

The routes (service/api/models.py, openai.py) hold no serving state: they parse the request,
ask this module for the model and the task modules for the answer.
"""

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy.orm import Session

from service.domain import models
from service.domain.refusals import Invalid
from service.inference import (
    classify,
    embeddings,
    generate,
    loader,
    pipelines,
    question_answering,
)
from service.inference.fill_mask import FillMaskRequest, fill_mask
from service.inference.served import FEATURE_EXTRACTION, Served

# The path under /v1/models/{id}/ that serves each task: named when a model is asked for a
# task it does not do. Every model also serves embeddings (FEATURE_EXTRACTION: a model
# with a head, from its base model), whatever its own task.
ENDPOINT = {"fill-mask": "fill-mask", "text-classification": "classify",
            "token-classification": "token-classification", "text-generation": "generate",
            "question-answering": "question-answering",
            FEATURE_EXTRACTION: "feature-extraction"}


def lookup(session: Session, model_id: str, task: str, scope: str | None) -> tuple[str, str]:
    """The id and storage prefix of the model that serves `task` for a caller of this
    scope: NotFound when there is no such model for it, Invalid when it does another task."""
    row = models.get(session=session, model_id=model_id, scope=scope)
    if row.task != task and task != FEATURE_EXTRACTION:
        raise Invalid("wrong_task", f"model {model_id} is a {row.task} model, not {task}; "
                      f"use /v1/models/{model_id}/{ENDPOINT.get(row.task, row.task)}")
    return row.id, row.storage_prefix


# Lookups for anonymous callers, per process: (model_id, task) -> (id, storage prefix, when
# looked up). A hit costs neither the database nor a trip to a thread (~1.5 ms of a ~10 ms
# small-model fill-mask). A model's id, owner, task and files never change; it can only be
# deleted: unload() forgets it here at once, and an entry lives LOOKUP_TTL_S, so another API
# process stops answering for a deleted model within that. (Callers with keys are looked up
# each time: their key and budget are checked with the lookup, in the same trip.)
LOOKUP_TTL_S = 2.0
_lookups: dict[tuple[str, str], tuple[str, str, float]] = {}


def cached(model_id: str, task: str) -> tuple[str, str] | None:
    """A fresh lookup() answer for an anonymous caller, or None."""
    hit = _lookups.get((model_id, task))
    if hit is not None and time.monotonic() - hit[2] < LOOKUP_TTL_S:
        return hit[0], hit[1]
    return None


def remember(model_id: str, task: str, found: tuple[str, str]) -> None:
    _lookups[(model_id, task)] = (*found, time.monotonic())


def forget(model_id: str) -> None:
    """Drop a deleted model's lookups."""
    for key in list(_lookups):  # a copy: the event loop may add entries meanwhile
        if key[0] == model_id:
            _lookups.pop(key, None)


def unload(model_id: str, cache_dir: Path) -> None:
    """A deleted model: its lookups forgotten, unloaded from this process and its local
    copy removed."""
    forget(model_id)
    loader.evict(model_id, cache_dir)


async def _warm_fill_mask(served: Served, id_: str, prefix: str) -> None:
    mask = served.tokenizer.mask_token
    await fill_mask(model_id=id_, prefix=prefix, request=FillMaskRequest(
        inputs=[f"The {mask} of France is Paris.", f"{mask} {mask} sleeps."]))


async def _warm_classify(served: Served, id_: str, prefix: str) -> None:
    await classify.classify(
        model_id=id_, prefix=prefix,
        request=classify.ClassifyRequest(inputs=["Warm up.", "A warm-up text."]))


async def _warm_tokens(served: Served, id_: str, prefix: str) -> None:
    await classify.token_classification(
        model_id=id_, prefix=prefix, request=classify.TokenRequest(
            inputs=["Warm up in Paris.", "A warm-up text from London."]))


async def _warm_embeddings(served: Served, id_: str, prefix: str) -> None:
    await embeddings.feature_extraction(model_id=id_, prefix=prefix, request=(
        embeddings.FeatureExtractionRequest(inputs=["Warm up.", "A warm-up text."])))


async def _warm_question_answering(served: Served, id_: str, prefix: str) -> None:
    await question_answering.question_answering(
        model_id=id_, prefix=prefix, request=question_answering.QuestionAnsweringRequest(
            inputs={"question": "Where is the warm-up?", "context": "The warm-up is here."}))


async def _warm_generate(served: Served, id_: str, prefix: str) -> None:
    await generate.generate(model_id=id_, prefix=prefix, request=generate.GenerateRequest(
        inputs="Warm up.", parameters=generate.GenerateParameters(max_new_tokens=2)))


# One request down the whole path of each task (threads, tokenizer, decoding), after the
# forward passes that loading runs (Served.prepare).
WARM_UP: dict[str, Callable[[Served, str, str], Awaitable[None]]] = {
    "fill-mask": _warm_fill_mask, "text-classification": _warm_classify,
    "token-classification": _warm_tokens, FEATURE_EXTRACTION: _warm_embeddings,
    "question-answering": _warm_question_answering, "text-generation": _warm_generate}


async def load_warm(model_id: str, prefix: str, task: str) -> tuple[Served, float]:
    """The model loaded in this process and warmed up, and the seconds that took (0 when
    it was loaded already)."""
    started = time.perf_counter()
    served = pipelines.loaded(model_id, task)
    if served is not None:
        return served, 0.0
    served = await pipelines.call(pipelines.load, model_id=model_id, prefix=prefix, task=task)
    if task in WARM_UP:
        await WARM_UP[task](served, model_id, prefix)
    return served, time.perf_counter() - started
