from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from jobspec.formats import GZIP_SUFFIXES, UPLOAD_SUFFIXES
from jobspec.names import MAX_NAME_CHARS
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
from service.domain import datasets, idempotency, quotas
from service.domain.dataset_preview import MAX_PREVIEW_RECORDS, MAX_TOP_LABELS, DatasetPreview
from service.domain.dataset_preview import preview as preview_of
from service.domain.datasets import DatasetPublic, DatasetUpload
from service.domain.refusals import DomainError
from service.domain.schemas import ListOf
from service.http_errors import ApiError
from service.settings import Settings
from service.storage import ObjectStore

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], route_class=JsonBodyRoute)

UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary",
                            "description": f"{UPLOAD_SUFFIXES}, or {GZIP_SUFFIXES}; "
                                           "CSV and TSV with a header row"},
                   "name": {"type": "string", "maxLength": 255},
                   "tag_column": {"type": "integer", "description": "as the query parameter"}}}}}}}
TAG_COLUMN_DOC = (
    "CoNLL column files: the column holding the tags, counted from 0 (column 0 holds the "
    "tokens; -1 is the last). Default: the last column if it holds BIO/IOBES tags, else 1.")
TagColumn = Annotated[int | None, Query(description=TAG_COLUMN_DOC)]


def _tag_column(query: int | None, form: bytearray) -> int | None:
    """The tag column from the query or the form field; both must agree."""
    if not form:
        return query
    try:
        value = int(form.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise ApiError(422, "invalid_request", "tag_column: give a column number, counted "
                       "from 0 (column 0 holds the tokens)", "tag_column") from None
    if query is not None and query != value:
        raise ApiError(422, "invalid_request", f"tag_column: the query says {query} and the "
                       f"form says {value}", "tag_column")
    return value


async def _receive(request: Request, store: ObjectStore, settings: Settings,
                   tag_column: int | None, room: int | None
                   ) -> tuple[DatasetUpload, str | None]:
    """Stream the multipart body into storage, part by part; returns the upload and name."""
    upload: DatasetUpload | None = None
    current: str | None = None
    name = bytearray()
    tag_form = bytearray()
    try:
        async for event in stream_parts(request, settings.max_upload_bytes):
            if isinstance(event, PartStart):
                current = event.name
                if current == "file":
                    if upload is not None:
                        raise ApiError(422, "invalid_request", "file: send one file", "file")
                    upload = await run_in_threadpool(
                        DatasetUpload, filename=event.filename or "", store=store,
                        settings=settings, tag_column=_tag_column(tag_column, tag_form),
                        room=room)
            elif current == "file" and upload is not None:
                await run_in_threadpool(upload.write, event.data)
            elif current == "name":
                name += event.data
                if len(name) > 4 * MAX_NAME_CHARS:  # UTF-8 takes at most 4 bytes a character
                    form_name(name)  # says why
            elif current == "tag_column":
                tag_form += event.data
                if len(tag_form) > 32:
                    raise ApiError(422, "invalid_request", "tag_column: too long", "tag_column")
        if upload is None:
            raise ApiError(422, "invalid_request", "file: the form has no 'file' part", "file")
        checked_name = form_name(name)
        if tag_form:  # it may have come after the file
            await run_in_threadpool(upload.request_tag_column,
                                    _tag_column(tag_column, tag_form))
        await run_in_threadpool(upload.finish)
    except BaseException:
        if upload is not None:
            await run_in_threadpool(upload.abort)
        raise
    return upload, checked_name


@router.post("", status_code=201, response_model=DatasetPublic, openapi_extra=UPLOAD_BODY,
             responses={413: {"description": "upload too large"}})
async def upload_dataset(request: Request, session: SessionDep, settings: SettingsDep,
                         store: StoreDep, caller: CallerDep,
                         idempotency_key: IdempotencyKey = None,
                         tag_column: TagColumn = None) -> DatasetPublic | JSONResponse:
    """Upload a corpus, streamed to storage and checked on the way (held in memory only as a
    SQuAD / CMRC .json document, up to 256 MB). A .txt whose lines are CoNLL columns is stored
    as format "conll", a .json of JSON lines as "jsonl", a .tsv whose quotes all quote whole
    fields (as pandas writes them) as "tsv-quoted" (else a TSV is linear: a line a record);
    the answer shows its columns, tag column and tag set."""
    refuse_declared_oversize(request, settings.max_upload_bytes)
    # Bytes the quota leaves, enforced as the file streams in; with an Idempotency-Key only
    # once the file is in, so that a retry of an upload that filled the quota replays it.
    room = None if idempotency_key else quotas.left(session, caller.owner, settings)
    if room == 0:  # refused before a byte is read
        raise quotas.exceeded(settings.storage_quota_bytes,
                              quotas.used_bytes(session, caller.owner))
    upload, name = await _receive(request, store, settings, tag_column, room)
    route = "POST /v1/datasets"
    # tag_column only when given, so fingerprints of earlier uploads still match.
    asked = upload.inspector.requested_tag_column
    fingerprint = idempotency.fingerprint(upload.inspector.sha256, upload.filename, name or "",
                                          *([] if asked is None else [f"tag_column={asked}"]))
    try:
        first = idempotency.replay(session=session, owner=caller.owner, key=idempotency_key,
                                   route=route, request_sha256=fingerprint)
    except DomainError:
        await run_in_threadpool(upload.abort)
        raise
    if first is not None:  # a retry: keep the first dataset, drop this copy
        await run_in_threadpool(upload.abort)
        return JSONResponse(first[1], first[0])
    try:  # again now the size is known: another upload may have finished meanwhile
        quotas.check(session, caller.owner, settings, upload.inspector.bytes)
    except DomainError:
        await run_in_threadpool(upload.abort)
        raise
    row = upload.record(session=session, owner=caller.owner, name=name)
    public = DatasetPublic.of(row)
    idempotency.remember(session=session, owner=caller.owner, key=idempotency_key, route=route,
                         request_sha256=fingerprint, status_code=201,
                         response=public.model_dump(mode="json"))
    session.commit()
    return public


@router.get("", response_model=ListOf[DatasetPublic])
def list_datasets(session: SessionDep, caller: CallerDep, limit: Limit = 20,
                  after: After = None) -> ListOf:
    rows, more = datasets.list_(session=session, scope=caller.scope, limit=limit, after=after)
    return ListOf[DatasetPublic](data=[DatasetPublic.of(r) for r in rows], has_more=more)


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: str, session: SessionDep, caller: CallerDep) -> DatasetPublic:
    return DatasetPublic.of(datasets.get(session=session, dataset_id=dataset_id,
                                         scope=caller.scope))


@router.get("/{dataset_id}/preview", response_model=DatasetPreview)
def preview_dataset(dataset_id: str, session: SessionDep, store: StoreDep, caller: CallerDep,
                    limit: Annotated[int, Query(ge=1, le=MAX_PREVIEW_RECORDS)] = 20,
                    top: Annotated[int, Query(ge=1, le=MAX_TOP_LABELS)] = 20
                    ) -> DatasetPreview:
    """The dataset's first `limit` records as the file holds them (a table's rows by column
    name; cells cut to 1,000 characters, lists to 200 items; at most 4 MiB read), and per
    column (a table's, or a record's fields: text, label, tokens, tags) its type, the role a
    job reads it as by default, empty cells, a histogram of text lengths (characters; fixed
    bin edges, the last open) and, for a column that holds labels, the `top` most frequent
    values with their counts. The histograms were counted over the whole file at upload."""
    row = datasets.get(session=session, dataset_id=dataset_id, scope=caller.scope)
    return preview_of(row=row, store=store, limit=limit, top=top)


@router.delete("/{dataset_id}", status_code=204, response_class=Response)
def delete_dataset(dataset_id: str, session: SessionDep, store: StoreDep,
                   caller: CallerDep) -> Response:
    datasets.delete(session=session, store=store, dataset_id=dataset_id, scope=caller.scope)
    return Response(status_code=204)
