from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import After, CallerDep, Limit, SessionDep, StoreDep
from service.domain import models
from service.domain.models import ModelPublic
from service.domain.schemas import ListOf
from service.errors import ApiError
from service.inference.fill_mask import FillMaskRequest, fill_mask

router = APIRouter(prefix="/v1/models", tags=["models"])

FILL_MASK_ANSWER = {200: {"description": "Hugging Face fill-mask format: a flat list for one "
                          "input with one mask, else a list of lists", "content": {
    "application/json": {"schema": {"type": "array", "items": {}}}}}}


@router.get("", response_model=ListOf[ModelPublic])
def list_models(session: SessionDep, caller: CallerDep, limit: Limit = 20,
                after: After = None) -> ListOf:
    rows, more = models.list_(session=session, scope=caller.scope, limit=limit, after=after)
    return ListOf[ModelPublic](data=[ModelPublic.of(r) for r in rows], has_more=more)


@router.get("/{model_id}", response_model=ModelPublic)
def get_model(model_id: str, session: SessionDep, caller: CallerDep) -> ModelPublic:
    return ModelPublic.of(models.get(session=session, model_id=model_id, scope=caller.scope))


@router.get("/{model_id}/download", response_class=StreamingResponse,
            responses={200: {"content": {"application/gzip": {}}}})
def download_model(model_id: str, session: SessionDep, store: StoreDep,
                   caller: CallerDep) -> StreamingResponse:
    """The export as a .tar.gz of a plain Hugging Face model directory."""
    row = models.get(session=session, model_id=model_id, scope=caller.scope)
    return StreamingResponse(
        store.iter_bytes(row.archive_key), media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{row.id}.tar.gz"',
                 "Content-Length": str(row.bytes)})


@router.post("/{model_id}/fill-mask", responses=FILL_MASK_ANSWER)
async def fill_mask_route(model_id: str, request: FillMaskRequest, session: SessionDep,
                          caller: CallerDep) -> Any:
    """Masked-token prediction, wire-compatible with the Hugging Face Inference API."""
    row = models.get(session=session, model_id=model_id, scope=caller.scope)
    if row.task != "fill-mask":
        raise ApiError(422, "invalid_request", f"model {model_id} does not do fill-mask")
    return await run_in_threadpool(fill_mask, model_id=row.id, prefix=row.storage_prefix,
                                   request=request)


@router.get("/{model_id}/fill-mask/health")
def fill_mask_health(model_id: str, session: SessionDep, caller: CallerDep) -> dict[str, str]:
    """What huggingface_hub's InferenceClient(model=URL).health_check() calls."""
    models.get(session=session, model_id=model_id, scope=caller.scope)
    return {"status": "ok"}
