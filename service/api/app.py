"""The FastAPI application: routes only speak HTTP; the domain does the work."""

import logging

from fastapi import FastAPI

from service import errors
from service.api import datasets, health, jobs, models


def create_app() -> FastAPI:
    app = FastAPI(title="Cloze", version="0.1.0",
                  description="Pretrain, fine-tune and serve Transformer language models.")
    errors.install(app)
    for module in (health, datasets, jobs, models):
        app.include_router(module.router)
    return app


logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
app = create_app()
