"""The job spec, defined once: the API validates requests with it and the engine reads the
stored spec with it, so a limit or a default cannot differ between them.

Only pydantic here: the API process imports it without torch, the engine without the service.
"""

from typing import Annotated, Any

from pydantic import Discriminator, Tag, TypeAdapter, ValidationError

from jobspec.common import SpecError
from jobspec.evaluation import EvaluateSpec
from jobspec.field_errors import error_param
from jobspec.finetune import FINETUNE_DATA, AdapterSpec, FinetuneHyperparameters, FinetuneSpec
from jobspec.model_shapes import (
    ARCHITECTURES,
    DECODERS,
    ENCODERS,
    SIZE_PRESETS,
    ModelSpec,
    Shape,
)
from jobspec.pretrain import (
    OBJECTIVES,
    RECIPES,
    PretrainHyperparameters,
    PretrainSpec,
    TokenizerSpec,
)


def _job_type(value: Any) -> str:
    # "type" may be left out: a job is a pretraining job unless it says otherwise.
    if isinstance(value, dict):
        return str(value.get("type", "pretrain"))
    return str(getattr(value, "type", "pretrain"))


JobSpec = Annotated[
    Annotated[PretrainSpec, Tag("pretrain")] | Annotated[FinetuneSpec, Tag("finetune")]
    | Annotated[EvaluateSpec, Tag("evaluate")],
    Discriminator(_job_type),
]
_ADAPTER: TypeAdapter[PretrainSpec | FinetuneSpec | EvaluateSpec] = TypeAdapter(JobSpec)


def parse_spec(data: Any) -> PretrainSpec | FinetuneSpec | EvaluateSpec:
    """A validated spec from its JSON form, or SpecError naming the field to fix."""
    try:
        spec = _ADAPTER.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = error_param(first)
        raise SpecError(param, f"{param}: {first['msg']}" if param else first["msg"]) from None
    if (problem := spec.inconsistency()) is not None:
        param, message = problem
        raise SpecError(param, f"{param}: {message}")
    return spec


__all__ = [
    "ARCHITECTURES",
    "DECODERS",
    "ENCODERS",
    "EvaluateSpec",
    "FINETUNE_DATA",
    "OBJECTIVES",
    "RECIPES",
    "SIZE_PRESETS",
    "AdapterSpec",
    "FinetuneHyperparameters",
    "FinetuneSpec",
    "JobSpec",
    "ModelSpec",
    "PretrainHyperparameters",
    "PretrainSpec",
    "Shape",
    "SpecError",
    "TokenizerSpec",
    "parse_spec",
]
