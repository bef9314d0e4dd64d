"""A small typed client of the Cloze API, and the `cloze datasets|jobs|sweeps|models`
commands. It speaks only HTTP (httpx): it imports nothing of the service."""

from cloze_client.client import Client, Page
from cloze_client.errors import ClozeError
from cloze_client.sse import StreamEvent
from cloze_client.types import (
    Dataset,
    Event,
    FillMaskResult,
    Job,
    JobEstimate,
    MetricPoint,
    Model,
    Sweep,
    Trial,
)

__all__ = ["Client", "ClozeError", "Dataset", "Event", "FillMaskResult", "Job",
           "JobEstimate", "MetricPoint", "Model", "Page", "StreamEvent", "Sweep", "Trial"]
