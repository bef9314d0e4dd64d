"""The FastAPI application: routes only speak HTTP; the domain does the work."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import http_errors, logs, reaper, webhook_sender
from service.api import (
    datasets,
    docs,
    health,
    jobs,
    models,
    openai,
    plots,
    prometheus,
    stream,
    sweeps,
    web,
)
from service.api.auth_first import AuthFirstMiddleware
from service.api.body_limit import UPLOAD_FRAMING_BYTES, BodyLimitMiddleware, Limit
from service.api.boundary import BoundaryMiddleware
from service.api.observe import ObservabilityMiddleware
from service.settings import get_settings


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    stops = [reaper.start(), webhook_sender.start()]
    yield
    for stop in stops:
        stop.set()


def create_app() -> FastAPI:
    settings = get_settings()
    # /docs and /redoc are ours (service/api/docs.py): scripts from this package, a CSP.
    app = FastAPI(title="Cloze", version="0.1.0", lifespan=lifespan, docs_url=None,
                  redoc_url=None,
                  description="Pretrain, fine-tune and serve Transformer language models.")
    http_errors.install(app)
    app.add_middleware(AuthFirstMiddleware)  # inside the body limit: callers known, body unread
    # Uploads stream to storage and check their own limit on the file part; the room above
    # it is for the multipart framing and form fields around the file.
    upload = Limit(settings.max_upload_bytes + UPLOAD_FRAMING_BYTES, "upload exceeds the "
                   f"limit of {settings.max_upload_bytes} bytes", "file")
    app.add_middleware(BodyLimitMiddleware, default=settings.max_json_body_bytes, routes={
        ("POST", "/v1/datasets"): upload, ("POST", "/v1/models/import"): upload})
    if settings.cors_origins:  # added after, so outside: a 413 carries the CORS headers
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key"])
    app.add_middleware(BoundaryMiddleware)  # Host and Origin before any route
    app.add_middleware(ObservabilityMiddleware)  # outermost: every answer counted and logged
    app.include_router(health.router)
    app.include_router(prometheus.router)
    for module in (datasets, jobs, models, openai, stream, plots, sweeps):
        app.include_router(module.router, responses=http_errors.ERROR_RESPONSES)
    app.include_router(web.router)  # the dashboard's pages (not in the API schema)
    app.include_router(docs.router)  # /docs and /redoc (not in the API schema)
    log = logging.getLogger("cloze.api")
    if settings.api_keys_required:
        log.info("API keys are required (Authorization: Bearer ...)")
    else:
        log.warning("API keys are NOT required for requests from this machine to its "
                    "loopback address (configured host %s); anyone on this machine can use "
                    "the API. Requests that reach it any other way need a key. Set "
                    "CLOZE_REQUIRE_API_KEYS=true to require them always.", settings.host)
    return app


logs.configure()  # the console format, or JSON lines with CLOZE_LOG_FORMAT=json
app = create_app()
