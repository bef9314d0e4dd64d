"""Typed job specifications: the one schema in jobspec/, which the engine reads too."""

from jobspec import FINETUNE_DATA, EvaluateSpec, FinetuneSpec, JobSpec, PretrainSpec

# The API's names for the request bodies: a create is exactly a spec.
PretrainJobCreate = PretrainSpec
FinetuneJobCreate = FinetuneSpec
EvaluateJobCreate = EvaluateSpec
JobCreate = JobSpec

__all__ = ["FINETUNE_DATA", "EvaluateJobCreate", "FinetuneJobCreate", "JobCreate",
           "PretrainJobCreate"]
