"""What a job's spec says about the model it makes, derived once: the pipeline task the model
serves and the Auto class that loads it, the `details` its model record keeps, and which
settings identify its run (the fingerprint a checkpoint must match to continue it).

The API (a continued-pretraining base's task, a published checkpoint's record), the worker
(the final model's record) and the engine (model cards, checkpoints) all read them here, so
a new objective or task is added in one place. Functions take the stored spec (its JSON
form) where a caller has only that: a job row's spec, or the spec in a checkpoint's
fingerprint.
"""

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the spec modules import this one
    from jobspec.finetune import FinetuneSpec
    from jobspec.pretrain import PretrainSpec

# The transformers pipeline tasks of Cloze's models (also the `task` of a model record and
# the Hugging Face Hub's pipeline_tag).
FILL_MASK = "fill-mask"
TEXT_GENERATION = "text-generation"
TEXT_CLASSIFICATION = "text-classification"
TOKEN_CLASSIFICATION = "token-classification"
# Extractive: a span of the context (the Hugging Face Inference API's question-answering).
QUESTION_ANSWERING = "question-answering"
# A base model without a head (BertModel, GPT2Model, a sentence-transformers encoder):
# imported only, never trained here.
FEATURE_EXTRACTION = "feature-extraction"

# The task each pretraining objective's model serves, and each fine-tuning task's.
OBJECTIVE_TASKS = {"mlm": FILL_MASK, "mlm_nsp": FILL_MASK, "clm": TEXT_GENERATION}
# Regression and multi-label models are sequence classifiers too (their config's
# problem_type tells the pipeline to leave the score as it is, or to apply a sigmoid).
FINETUNE_TASKS = {"text_classification": TEXT_CLASSIFICATION,
                  "token_classification": TOKEN_CLASSIFICATION,
                  "regression": TEXT_CLASSIFICATION,
                  "multi_label_classification": TEXT_CLASSIFICATION,
                  "question_answering": QUESTION_ANSWERING}
# The config.problem_type of each sequence task's export (transformers' names).
PROBLEM_TYPES = {"text_classification": "single_label_classification",
                 "regression": "regression",
                 "multi_label_classification": "multi_label_classification"}

# The transformers Auto class that loads a model of each task (the model card's "how to
# use", and what an import is checked with).
AUTO_CLASSES = {FILL_MASK: "AutoModelForMaskedLM", TEXT_GENERATION: "AutoModelForCausalLM",
                TEXT_CLASSIFICATION: "AutoModelForSequenceClassification",
                TOKEN_CLASSIFICATION: "AutoModelForTokenClassification",
                QUESTION_ANSWERING: "AutoModelForQuestionAnswering",
                FEATURE_EXTRACTION: "AutoModel"}


def objective_task(objective: str | None) -> str:
    """The task of a pretraining objective's model (mlm when None, as a spec resolves it):
    also the task a continued-pretraining base model must have."""
    return OBJECTIVE_TASKS.get(objective or "mlm", FILL_MASK)


def pipeline_task(spec: Mapping[str, Any]) -> str:
    """The pipeline task of the model a stored spec makes."""
    if spec.get("type") == "finetune":
        return FINETUNE_TASKS.get(spec.get("task", ""), TEXT_CLASSIFICATION)
    return objective_task(spec.get("objective"))


def auto_class(task: str) -> str:
    """The Auto class that loads a model of this pipeline task."""
    return AUTO_CLASSES[task]


def model_details(spec: Mapping[str, Any], **measured: Any) -> dict[str, Any]:
    """A model record's `details`: what its run measured (or its checkpoint says), in the
    caller's order, then what its stored spec says. The job's final model
    (workers/runner.py) and a model published from one of its checkpoints
    (service/domain/models.py) say the same of the spec."""
    if spec.get("type") == "finetune":
        said = {"base_model_id": spec.get("base_model_id"), "task": spec.get("task"),
                "adapter": spec.get("adapter")}
    else:
        said = {"objective": spec.get("objective"), "model": spec.get("model"),
                "base_model_id": spec.get("base_model_id"),
                "sequence_length": (spec.get("hyperparameters") or {}).get("sequence_length"),
                "recipe": spec.get("recipe")}
    return {**measured, **said}


# Spec fields that do not change a run's numbers, so they are not part of its identity: a
# checkpoint made under other values still continues the run (how often to log, evaluate or
# checkpoint, when to stop early, the name; a recipe is already in the hyperparameters it
# filled; probes only score). The webhook is left out too: its secret must not reach
# checkpoints or the model card (the fingerprint's spec is what the card describes). How
# processes share the model (resources.strategy: ddp or fsdp) and whether it is compiled
# change neither the numbers nor the checkpoints. A field a spec type lacks is ignored.
# Changing this set changes every fingerprint: checkpoints made before would not resume.
NOT_IN_FINGERPRINT: dict[str, Any] = {
    "name": True, "log_every": True, "eval_every": True, "checkpoint_every": True,
    "recipe": True, "early_stopping": True, "probes": True, "webhook": True,
    "hyperparameters": {"compile": True}, "resources": {"strategy": True},
}


def run_fingerprint(spec: "PretrainSpec | FinetuneSpec", **data: Any) -> dict[str, Any]:
    """What a checkpoint must share with a run to continue it: every setting of the spec
    that changes the numbers (under "spec"), and what the engine adds about the data and
    the base model (data)."""
    return {"spec": spec.model_dump(mode="json", exclude=NOT_IN_FINGERPRINT), **data}
