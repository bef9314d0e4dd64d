"""OpenAI-compatible routes, so the `openai` client (and what is built on it) works against
Cloze unchanged: `OpenAI(base_url="http://127.0.0.1:8000/v1").embeddings.create(...)` with a
Cloze model id as the model."""

from typing import Any

from fastapi import APIRouter, Request

from service.api.json_body import JsonBodyRoute
from service.api.models import resolve
from service.domain.refusals import DomainError, NotFound
from service.inference import embeddings
from service.inference.served import FEATURE_EXTRACTION

router = APIRouter(prefix="/v1", tags=["openai"], route_class=JsonBodyRoute)


@router.post("/embeddings")
async def create_embeddings(body: embeddings.EmbeddingsRequest, request: Request
                            ) -> dict[str, Any]:
    """Embeddings in OpenAI's wire format: unit-length vectors of the model `model` (a
    Cloze model id), floats or base64, with the tokens read as usage."""
    try:
        id_, prefix = await resolve(request, body.model, FEATURE_EXTRACTION)
    except DomainError as exc:
        if exc.code != "not_found":
            raise
        # OpenAI's code and param for an unknown model (the model is named in the body)
        raise NotFound("model_not_found", f"model: no model with id {body.model!r}",
                       "model") from None
    return await embeddings.openai_embeddings(model_id=id_, prefix=prefix, request=body)
