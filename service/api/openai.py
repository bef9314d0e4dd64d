"""OpenAI-compatible routes, so the `openai` client (and what is built on it) works against
Cloze unchanged: `OpenAI(base_url="http://127.0.0.1:8000/v1").embeddings.create(...)` with a
Cloze model id as the model."""

from typing import Any

from fastapi import APIRouter, Request

from service.api.json_body import JsonBodyRoute
from service.api.models import EMBEDDINGS, resolve
from service.domain.errors import DomainError
from service.errors import ApiError
from service.inference import embeddings

router = APIRouter(prefix="/v1", tags=["openai"], route_class=JsonBodyRoute)


@router.post("/embeddings")
async def create_embeddings(body: embeddings.EmbeddingsRequest, request: Request
                            ) -> dict[str, Any]:
    """Embeddings in OpenAI's wire format: unit-length vectors of the model `model` (a
    Cloze model id), floats or base64, with the tokens read as usage."""
    try:
        id_, prefix = await resolve(request, body.model, EMBEDDINGS)
    except DomainError as exc:
        if exc.code != "not_found":
            raise
        raise ApiError(404, "model_not_found", f"model: no model with id {body.model!r}",
                       "model") from None
    return await embeddings.openai_embeddings(model_id=id_, prefix=prefix, request=body)
