"""OpenAI-compatible routes, so the `openai` client (and what is built on it) works against
Cloze unchanged: `OpenAI(base_url="http://127.0.0.1:8000/v1").embeddings.create(...)` or
`.completions.create(...)` with a Cloze model id as the model."""

from typing import Any

from fastapi import APIRouter, Request

from service.api.json_body import JsonBodyRoute
from service.api.models import resolve
from service.api.token_events import event_stream
from service.domain.refusals import DomainError, NotFound
from service.inference import completions, embeddings
from service.inference.served import FEATURE_EXTRACTION, GENERATION

router = APIRouter(prefix="/v1", tags=["openai"], route_class=JsonBodyRoute)


async def _resolve(request: Request, model: str, task: str) -> tuple[str, str]:
    try:
        return await resolve(request, model, task)
    except DomainError as exc:
        if exc.code != "not_found":
            raise
        # OpenAI's code and param for an unknown model (the model is named in the body)
        raise NotFound("model_not_found", f"model: no model with id {model!r}",
                       "model") from None


@router.post("/embeddings")
async def create_embeddings(body: embeddings.EmbeddingsRequest, request: Request
                            ) -> dict[str, Any]:
    """Embeddings in OpenAI's wire format: unit-length vectors of the model `model` (a
    Cloze model id), floats or base64, with the tokens read as usage."""
    id_, prefix = await _resolve(request, body.model, FEATURE_EXTRACTION)
    return await embeddings.openai_embeddings(model_id=id_, prefix=prefix, request=body)


COMPLETION_ANSWER: dict[int | str, dict[str, Any]] = {200: {
    "description": "a text_completion; with stream: its chunks as server-sent events, "
                   "then `data: [DONE]`",
    "content": {"application/json": {"schema": {"type": "object"}},
                "text/event-stream": {"schema": {"type": "string"}}}}}


@router.post("/completions", responses=COMPLETION_ANSWER)
async def create_completion(body: completions.CompletionRequest, request: Request) -> Any:
    """Completions in OpenAI's wire format on a Cloze text-generation model (`model`):
    prompt (a text or a list), max_tokens, temperature (0: greedy), top_p, stop, seed, n,
    logprobs, echo, stream (with stream_options.include_usage); decoded in the model's
    batch with every other request for it."""
    id_, prefix = await _resolve(request, body.model, GENERATION)
    if body.stream:
        return event_stream(await completions.stream(model_id=id_, prefix=prefix,
                                                     request=body), done=True)
    return await completions.complete(model_id=id_, prefix=prefix, request=body)
