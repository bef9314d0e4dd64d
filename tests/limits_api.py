"""The datasets and model-import routes in-process, for the limits tests: SQLite, a local
object directory, no servers. The caller is switchable (`api.as_owner("bob")`) so tests can
play two tenants."""

import io
import json
import struct
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service import http_errors
from service.api import datasets, jobs, models
from service.api.auth import authenticate
from service.db import get_session, make_engine
from service.domain import keys
from service.domain.tables import Base
from service.settings import Settings, get_settings
from service.storage import ObjectStore, get_store


@dataclass
class Api:
    client: TestClient
    settings: Settings
    store: ObjectStore
    objects: Path
    sessions: Any
    caller: list[keys.Principal]

    def as_owner(self, owner: str) -> "Api":
        self.caller[0] = keys.Principal(owner=owner)
        return self

    def upload(self, filename: str, data: bytes, **form: str) -> Any:
        return self.client.post("/v1/datasets", files={"file": (filename, data)}, data=form)

    def import_(self, data: bytes, filename: str = "m.tar.gz", **form: str) -> Any:
        return self.client.post("/v1/models/import", files={"file": (filename, data)},
                                data=form)

    def stored(self) -> list[str]:
        return sorted(p.relative_to(self.objects).as_posix()
                      for p in self.objects.rglob("*") if p.is_file())


def make_api(tmp_path: Path, **overrides: Any) -> Iterator[Api]:
    objects = tmp_path / "objects"
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'cloze.db'}",
                        storage_url=f"file://{objects}", rate_limit_per_minute=0, **overrides)
    engine = make_engine(settings.database_url)
    Base.metadata.create_all(engine)
    sessions = sessionmaker(bind=engine, expire_on_commit=False)
    store = ObjectStore(settings.storage_url)
    caller = [keys.ANONYMOUS]

    def session() -> Iterator[Session]:
        with sessions() as s:
            yield s
            s.commit()

    app = FastAPI()
    http_errors.install(app)
    app.include_router(datasets.router)
    app.include_router(models.router)
    app.include_router(jobs.router)
    app.dependency_overrides.update({
        get_session: session, get_settings: lambda: settings, get_store: lambda: store,
        authenticate: lambda: caller[0]})
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client, settings, store, objects, sessions, caller)
    engine.dispose()


def assert_error(r: Any, status: int, says: str = "", param: str | None = None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"code", "message", "param"}, error
    assert says in error["message"], error
    if param is not None:
        assert error["param"] == param, error
    assert "Traceback" not in r.text


def safetensors_bytes(tensors: dict[str, tuple[str, list[int], bytes]]) -> bytes:
    """A safetensors file written by hand, so tests can lie in its header."""
    header: dict[str, Any] = {}
    offset, blobs = 0, []
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


def tar_gz(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tar_dir(directory: Path, arcname: str = "model") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(directory, arcname=arcname)
    return buf.getvalue()
