"""The field a pydantic validation error is about, as the user wrote it: the `param` of an
error answer ("hyperparameters.learning_rate"). One converter for parse_spec, the API's
request errors (service/http_errors.py) and the jobs domain's re-validation, so a location reads
the same whichever of them refuses the request."""

from collections.abc import Mapping
from typing import Any

# The tags pydantic puts in a location when it picks a member of the job-spec union
# (jobspec.JobSpec): they name no field the user wrote.
UNION_TAGS = frozenset({"pretrain", "finetune", "evaluate"})


def _union_member(part: Any) -> bool:
    """A member of a plain union in a location ("list[SuiteTask]", "literal['uploaded']"):
    pydantic names the branch it tried; no field of a spec has brackets in its name."""
    return isinstance(part, str) and part.endswith("]") and "[" in part


def error_param(error: Mapping[str, Any], *, in_request: bool = False) -> str | None:
    """The dotted path of the field `error` (one of ValidationError.errors()) is about;
    None for the whole value. in_request: the location starts with the part of the request
    (FastAPI's "body", "query", ...), which is dropped, or named when nothing follows it."""
    loc = tuple(error.get("loc", ()))
    if in_request and loc:
        part, loc = str(loc[0]), loc[1:]
    else:
        part = None
    fields = [str(p) for p in loc
              if not (isinstance(p, str) and p in UNION_TAGS) and not _union_member(p)]
    return ".".join(fields) or part
