from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from pydantic import Field as PydField
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from jobspec import names
from service.api.auth import anonymous_on_the_loop, authenticate_caller
from service.api.deps import (
    After,
    CallerDep,
    IdempotencyKey,
    Limit,
    SessionDep,
    SettingsDep,
    StoreDep,
)
from service.api.json_body import JsonBodyRoute
from service.api.multipart import (
    PartStart,
    form_name,
    refuse_declared_oversize,
    stream_parts,
)
from service.api.token_events import event_stream
from service.db import session_scope
from service.domain import idempotency, imports, keys, models, quotas
from service.domain.models import ModelPublic
from service.domain.schemas import ListOf
from service.domain.tables import ModelRow
from service.http_errors import ApiError
from service.inference import (
    classify,
    embeddings,
    generate,
    question_answering,
    registry,
)
from service.inference.fill_mask import FillMaskRequest, fill_mask
from service.inference.served import FEATURE_EXTRACTION, GENERATION, LOAD_ADMITTED
from service.scratch import scratch_dir
from service.settings import get_settings

router = APIRouter(prefix="/v1/models", tags=["models"], route_class=JsonBodyRoute)


def _answer(description: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": description, "content": {
        "application/json": {"schema": {"type": "array", "items": {}}}}}}


IMPORT_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary",
                            "description": ".tar.gz, .tar or .zip of a model directory"},
                   "name": {"type": "string", "maxLength": 255}}}}}}}


@router.get("", response_model=ListOf[ModelPublic])
def list_models(session: SessionDep, caller: CallerDep, limit: Limit = 20,
                after: After = None) -> ListOf:
    rows, more = models.list_(session=session, scope=caller.scope, limit=limit, after=after)
    return ListOf[ModelPublic](data=[ModelPublic.of(r) for r in rows], has_more=more)


@router.post("/import", status_code=201, response_model=ModelPublic, openapi_extra=IMPORT_BODY)
async def import_model(request: Request, session: SessionDep, store: StoreDep,
                       settings: SettingsDep, caller: CallerDep,
                       idempotency_key: IdempotencyKey = None) -> ModelPublic | JSONResponse:
    """Import a Hugging Face model directory (safetensors weights only) to fine-tune or serve."""
    with scratch_dir("import-") as tmp:  # collected if this process dies
        archive, name, digest, filename = await _receive_archive(request, Path(tmp), settings)
        route = "POST /v1/models/import"
        fingerprint = idempotency.fingerprint(digest, name or "")
        first = idempotency.replay(session=session, owner=caller.owner, key=idempotency_key,
                                   route=route, request_sha256=fingerprint)
        if first is not None:
            return JSONResponse(first[1], first[0])
        extracted = Path(tmp) / "x"
        model_dir, info, size = await run_in_threadpool(
            imports.import_archive, archive, extracted, settings)
        # By default the archive's top folder; files at its top level: the file's name.
        # A folder or file name is no name the user typed: what the name rule refuses is
        # left out of it, not refused (jobspec/names.py).
        default_name = names.derived(model_dir.name if model_dir != extracted
                                     else _stem(filename)) or "imported-model"
        quotas.check(session, caller.owner, settings, size)
        row: ModelRow = await run_in_threadpool(
            models.publish, session=session, store=store, export_dir=model_dir,
            owner=caller.owner, name=name or default_name, job_id=None, task=info["task"],
            architecture=info["architecture"], mask_token=info["mask_token"],
            details={"imported": True, "architectures": info["architectures"],
                     "labels": info["labels"], "pooling": info["pooling"],
                     "skipped_files": info["skipped_files"]})
    public = ModelPublic.of(row)
    idempotency.remember(session=session, owner=caller.owner, key=idempotency_key, route=route,
                         request_sha256=fingerprint, status_code=201,
                         response=public.model_dump(mode="json"))
    session.commit()
    return public


def _stem(filename: str | None) -> str:
    """An uploaded file's name without its folders and archive suffixes."""
    stem = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in (".gz", ".tgz", ".tar", ".zip"):
        stem = stem.removesuffix(suffix)
    return stem[:255] or "imported-model"


async def _receive_archive(request: Request, tmp: Path, settings: Any
                           ) -> tuple[Path, str | None, str, str | None]:
    """Stream the 'file' part to a temporary file, within the upload limit."""
    import hashlib

    refuse_declared_oversize(request, settings.max_upload_bytes)
    target = tmp / "upload"
    digest, size, current, name = hashlib.sha256(), 0, None, bytearray()
    filename: str | None = None
    seen_file = False
    with open(target, "wb") as out:
        async for event in stream_parts(request, settings.max_upload_bytes):
            if isinstance(event, PartStart):
                current = event.name
                seen_file |= current == "file"
                if current == "file":
                    filename = event.filename
            elif current == "file":
                size += len(event.data)
                if size > settings.max_upload_bytes:
                    raise ApiError(413, "payload_too_large", "upload exceeds the limit of "
                                   f"{settings.max_upload_bytes} bytes", "file")
                digest.update(event.data)
                out.write(event.data)
            elif current == "name" and len(name) < 1024:
                name += event.data
    if not seen_file or size == 0:
        raise ApiError(422, "invalid_request", "file: send the archive in a 'file' part", "file")
    return target, form_name(name), digest.hexdigest(), filename


@router.get("/{model_id}", response_model=ModelPublic)
def get_model(model_id: str, session: SessionDep, caller: CallerDep) -> ModelPublic:
    return ModelPublic.of(models.get(session=session, model_id=model_id, scope=caller.scope))


@router.delete("/{model_id}", status_code=204, response_class=Response)
def delete_model(model_id: str, session: SessionDep, store: StoreDep, settings: SettingsDep,
                 caller: CallerDep) -> Response:
    """Delete the model, its files and this process's loaded copy (409 while a queued or
    running job starts from it)."""
    models.delete(session=session, store=store, model_id=model_id, scope=caller.scope)
    registry.unload(model_id, settings.cache_dir)
    return Response(status_code=204)


@router.get("/{model_id}/download", response_class=StreamingResponse,
            responses={200: {"content": {"application/gzip": {}}}})
def download_model(model_id: str, session: SessionDep, store: StoreDep,
                   caller: CallerDep) -> StreamingResponse:
    """The export as a .tar.gz of a plain Hugging Face model directory."""
    row = models.get(session=session, model_id=model_id, scope=caller.scope)
    key, headers = row.archive_key, {
        "Content-Disposition": f'attachment; filename="{row.id}.tar.gz"',
        "Content-Length": str(row.bytes)}
    _release(session)  # a slow download must not hold a database connection
    return StreamingResponse(store.iter_bytes(key), media_type="application/gzip",
                             headers=headers)


def _release(session: Session) -> None:
    """Give the request's database connection back to the pool now, not after the answer
    is sent (the session dependency closes only then): what follows may take seconds."""
    session.commit()
    session.close()


async def resolve(request: Request, model_id: str, task: str) -> tuple[str, str]:
    """The model's id and storage prefix for this caller (404, 422 as registry.lookup says);
    an anonymous caller's from the registry's short-lived cache when it has them."""
    settings = get_settings()
    # Batched tasks and generation are admitted by load (a bounded queue per model: 503 +
    # Retry-After when
    # it is full), not by the per-minute budget, unless a setting says so: an application
    # calling at the hardware's speed is not throttled to a tenth of it.
    budgeted = settings.rate_limit_inference or task not in LOAD_ADMITTED
    anonymous = anonymous_on_the_loop(request, settings, budgeted=budgeted)
    if anonymous is not None:
        hit = registry.cached(model_id, task)
        if hit is not None:
            return hit
    found = await run_in_threadpool(_serving, request, model_id, task,
                                    anonymous is not None, budgeted)
    if anonymous is not None:
        registry.remember(model_id, task, found)
    return found


def _serving(request: Request, model_id: str, task: str, charged: bool = False,
             budgeted: bool = True) -> tuple[str, str]:
    """Who calls and the model's id and storage prefix, in one trip to a thread: as the
    usual dependencies (session, caller) plus the lookup it was four, and each trip costs
    the event loop more than a small model's answer. The database connection is back in
    the pool before inference starts: a request may wait its turn for the model for
    seconds, and a connection held meanwhile is one the next request cannot have."""
    with session_scope() as session:
        caller = keys.ANONYMOUS if charged else authenticate_caller(
            request, session, get_settings(), budgeted=budgeted)
        return registry.lookup(session, model_id, task, caller.scope)


@router.post("/{model_id}/fill-mask", responses=_answer(
    "a flat list for one input with one mask, else a list of lists"))
async def fill_mask_route(model_id: str, body: FillMaskRequest, request: Request) -> Any:
    """Masked-token prediction, wire-compatible with the Hugging Face Inference API."""
    id_, prefix = await resolve(request, model_id, "fill-mask")
    return await fill_mask(model_id=id_, prefix=prefix, request=body)


@router.post("/{model_id}/classify", responses=_answer("[[{label, score}]], one list per input"))
async def classify_route(model_id: str, body: classify.ClassifyRequest,
                         request: Request) -> Any:
    """Text classification in the Hugging Face Inference API format.

    `inputs`: a text, a pair `{"text": ..., "text_pair": ...}` (NLI, paraphrase, STS: read
    in the model's pair format, as transformers' pipeline reads it), or a list of either.
    The answer is one list of `{label, score}` per input, best first: softmax scores; for
    a regression model one `{"label": "LABEL_0", "score": <the predicted number>}`; for a
    multi-label model every label's sigmoid score, with `"on": true` where it reaches the
    decision threshold chosen on validation when the model was fine-tuned (its
    config.json's `cloze_threshold`)."""
    id_, prefix = await resolve(request, model_id, "text-classification")
    return await classify.classify(model_id=id_, prefix=prefix, request=body)


@router.post("/{model_id}/token-classification", responses=_answer(
    "[{entity_group, score, word, start, end}] for one input; a list of those for several"))
async def token_classification_route(model_id: str, body: classify.TokenRequest,
                                     request: Request) -> Any:
    """Token classification (NER, tagging) in the Hugging Face Inference API format."""
    id_, prefix = await resolve(request, model_id, "token-classification")
    return await classify.token_classification(model_id=id_, prefix=prefix, request=body)


QA_ANSWER: dict[int | str, dict[str, Any]] = {200: {
    "description": "{answer, score, start, end} for one input and top_k 1; a list of top_k "
                   "of them, best first, for top_k > 1; for a list of inputs, a list of "
                   "those, one per input",
    "content": {"application/json": {"schema": {}}}}}


@router.post("/{model_id}/question-answering", responses=QA_ANSWER)
async def question_answering_route(model_id: str,
                                   body: question_answering.QuestionAnsweringRequest,
                                   request: Request) -> Any:
    """Extractive question answering in the Hugging Face Inference API format (what
    huggingface_hub's InferenceClient.question_answering sends): `{"inputs": {"question",
    "context"}, "parameters": {top_k, doc_stride, max_answer_len, max_seq_len,
    handle_impossible_answer, align_to_words}}` -> `{"answer", "score", "start", "end"}`:
    the span of the context (characters start to end) that answers the question, and its
    probability; a context longer than the model's window is read in windows overlapping by
    doc_stride tokens. With handle_impossible_answer, `""` (start = end = 0) is the answer
    when no span is likelier. Answers and scores are those transformers' (4.x)
    question-answering pipeline gives on the downloaded model."""
    id_, prefix = await resolve(request, model_id, "question-answering")
    return await question_answering.question_answering(model_id=id_, prefix=prefix,
                                                       request=body)


GENERATE_ANSWER: dict[int | str, dict[str, Any]] = {200: {
    "description": "[{generated_text, details?}] for one input, a list of those for several; "
                   "with stream: text-generation-inference's server-sent token events",
    "content": {"application/json": {"schema": {"type": "array", "items": {}}},
                "text/event-stream": {"schema": {"type": "string"}}}}}


@router.post("/{model_id}/generate", responses=GENERATE_ANSWER)
async def generate_route(model_id: str, body: generate.GenerateRequest, request: Request) -> Any:
    """Text generation as text-generation-inference and the Hugging Face Inference API
    answer it (what huggingface_hub's InferenceClient.text_generation sends and parses):
    `{"inputs", "parameters": {max_new_tokens, do_sample, temperature, top_k, top_p,
    repetition_penalty, seed, stop, return_full_text, details, top_n_tokens}, "stream"}`.
    Requests for one model are decoded together (continuous batching); with `stream`,
    one server-sent event per token, the last with the whole text."""
    id_, prefix = await resolve(request, model_id, GENERATION)
    if body.stream:
        return event_stream(await generate.generate_stream(model_id=id_, prefix=prefix,
                                                           request=body))
    return await generate.generate(model_id=id_, prefix=prefix, request=body)


@router.post("/{model_id}/feature-extraction", responses=_answer(
    "one vector per input (a list of one for a single text), pooled as the model says"))
async def feature_extraction_route(model_id: str, body: embeddings.FeatureExtractionRequest,
                                   request: Request) -> Any:
    """Embeddings in the Hugging Face Inference API (text-embeddings-inference) format: any
    model, pooled as its sentence-transformers files say, else the mean of its last hidden
    states."""
    id_, prefix = await resolve(request, model_id, FEATURE_EXTRACTION)
    return await embeddings.feature_extraction(model_id=id_, prefix=prefix, request=body)


@router.post("/{model_id}/sentence-similarity", responses=_answer(
    "one cosine similarity per sentence, in their order"))
async def sentence_similarity_route(model_id: str, body: embeddings.SentenceSimilarityRequest,
                                    request: Request) -> Any:
    """The cosine of the source sentence's embedding with each sentence's (the Hugging Face
    Inference API's sentence-similarity)."""
    id_, prefix = await resolve(request, model_id, FEATURE_EXTRACTION)
    return await embeddings.sentence_similarity(model_id=id_, prefix=prefix, request=body)


class Loaded(BaseModel):
    id: str
    task: str
    bytes: int = PydField(description="memory its parameters and buffers hold")
    precision: str
    graph: str = PydField(description="traced: the forward pass runs as a TorchScript graph "
                          "checked against the eager one at load; eager: as transformers' "
                          "modules (tracing failed or differed, or CLOZE_INFERENCE_GRAPH)")
    load_seconds: float = PydField(description="0 when it was loaded already")


@router.post("/{model_id}/load", response_model=Loaded)
async def load_route(model_id: str, session: SessionDep, caller: CallerDep) -> Loaded:
    """Load the model into this server process now (and warm it up), so that the first
    request is as fast as the ones after it. Models also load on first use."""
    row = await run_in_threadpool(models.get, session=session, model_id=model_id,
                                  scope=caller.scope)
    id_, task, prefix = row.id, row.task, row.storage_prefix
    _release(session)
    served, seconds = await registry.load_warm(id_, prefix, task)
    return Loaded(id=id_, task=task, bytes=served.nbytes,
                  precision=str(served.dtype).removeprefix("torch."), graph=served.graph,
                  load_seconds=seconds)


@router.get("/{model_id}/{task}/health")
def task_health(model_id: str, task: str, session: SessionDep, caller: CallerDep
                ) -> dict[str, str]:
    """What huggingface_hub's InferenceClient(model=URL).health_check() calls."""
    models.get(session=session, model_id=model_id, scope=caller.scope)
    return {"status": "ok"}


