"""Typed dependencies shared by the routes."""

from typing import Annotated

from fastapi import Depends, Header, Query
from sqlalchemy.orm import Session

from service.api.auth import CallerDep as CallerDep
from service.db import get_session
from service.settings import Settings, get_settings
from service.storage import ObjectStore, get_store

SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
Limit = Annotated[int, Query(ge=1, le=100, description="page size")]
After = Annotated[str | None, Query(max_length=64, description="id of the last item seen")]
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=255,
    description="retrying a create with the same key returns the first result")]
