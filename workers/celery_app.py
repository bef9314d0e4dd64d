"""The workers' Celery app: `celery -A workers.celery_app worker`, or `cloze worker`."""

from celery import Celery

from service.queue import celery_config
from service.settings import get_settings

app = Celery("cloze", include=["workers.tasks"])
app.conf.update(celery_config(get_settings()))
