"""Text classification and token classification in the Hugging Face Inference API formats
(what huggingface_hub's InferenceClient parses). Text generation is generate.py's."""

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from service.domain.refusals import TooLarge
from service.inference.pipelines import (
    check_outputs,
    check_text,
    check_top_k,
    in_thread,
    infer,
    load_async,
    texts_of,
)
from service.inference.served import Seq, Served
from service.settings import get_settings


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")  # HF clients may send "options" and the like
    inputs: str | list[str]


class ClassifyParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")
    top_k: int | None = Field(default=None, ge=1)
    function_to_apply: Literal["sigmoid", "softmax", "none"] | None = None
    # True: a text longer than the model takes is cut to the length it was fine-tuned on
    # (as training cut it; TEI's `truncate`); false: such a text is refused (413).
    truncation: bool = True


class TextPair(BaseModel):
    """A pair of texts to classify together (NLI, paraphrase, STS), as the HF API and
    transformers' text-classification pipeline take it."""

    model_config = ConfigDict(extra="forbid")
    text: str
    text_pair: str


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # HF clients may send "options" and the like
    # A text, a pair {"text", "text_pair"}, or a list of either.
    inputs: str | TextPair | list[str] | list[TextPair]
    parameters: ClassifyParameters | None = None


class TokenParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")
    aggregation_strategy: Literal["none", "simple", "first", "average", "max"] = "simple"
    ignore_labels: list[str] | None = Field(default=None, max_length=1000)


class TokenRequest(_Request):
    parameters: TokenParameters | None = None


def _plain(value: Any) -> Any:
    """numpy scalars (token-classification scores) as JSON numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


# A multi-label model's decision threshold in its config.json (finetune/task.py writes it).
THRESHOLD_FIELD = "cloze_threshold"


async def classify(*, model_id: str, prefix: str, request: ClassifyRequest) -> Any:
    """A list of [{label, score}] lists, one per input (a text or a pair), best first (as
    the HF API answers). The scores are what the pipeline gives for the model's
    problem_type: softmax, the raw value of a regression model, a sigmoid per label of a
    multi-label model, where each label also says whether it is "on" (its score at least
    the threshold the model was fine-tuned to)."""
    served = await load_async(model_id, prefix, "text-classification")
    chunks, post = await in_thread(_classify_inputs, served, request)
    logits = await infer(served, [_seq(chunk) for chunk in chunks])
    answers = _plain([served.pipe.postprocess({"logits": x}, **post) for x in logits])
    config = served.model.config
    applied = (request.parameters or ClassifyParameters()).function_to_apply
    if config.problem_type == "multi_label_classification" and applied in (None, "sigmoid"):
        threshold = float(getattr(config, THRESHOLD_FIELD, 0.5))
        for answer in answers:
            for label in answer:
                label["on"] = label["score"] >= threshold
    return answers


def _classify_texts(inputs: str | TextPair | list[str] | list[TextPair]
                    ) -> list[str] | list[dict[str, str]]:
    """The request's texts or pairs ({"text", "text_pair"}), each text checked against the
    count and length limits."""
    if isinstance(inputs, str) or (isinstance(inputs, list) and
                                   all(isinstance(x, str) for x in inputs)):
        return texts_of(inputs)  # type: ignore[arg-type]
    pairs: list[TextPair] = [inputs] if isinstance(inputs, TextPair) else \
        [p for p in inputs if isinstance(p, TextPair)]
    texts_of([p.text for p in pairs])  # the count, and each first text
    for pair in pairs:
        texts_of(pair.text_pair)
    return [{"text": p.text, "text_pair": p.text_pair} for p in pairs]


def _classify_inputs(served: Served, request: ClassifyRequest
                     ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each text tokenized once, by the pipeline's own preprocessing."""
    texts = _classify_texts(request.inputs)
    params = request.parameters or ClassifyParameters()
    labels = int(served.model.config.num_labels)
    # By default every label (as the HF API answers), but never more than max_top_k.
    top_k = check_top_k(params.top_k, min(labels, get_settings().max_top_k))
    check_outputs(len(texts) * min(top_k, labels), "labels (inputs x top_k)",
                  "parameters.top_k")
    kwargs: dict[str, Any] = {"top_k": top_k}
    if params.truncation:
        kwargs.update(truncation=True, max_length=served.window)
    if params.function_to_apply:
        kwargs["function_to_apply"] = params.function_to_apply
    pre, _, post = served.pipe._sanitize_parameters(**kwargs)
    with served.tokenizing:
        chunks = [served.pipe.preprocess(text, **pre) for text in texts]
    if not params.truncation:
        check_lengths(served, chunks)
    return chunks, post


def check_lengths(served: Served, chunks: list[dict[str, Any]]) -> None:
    for chunk in chunks:
        if chunk["input_ids"].shape[-1] > served.max_tokens:
            raise TooLarge("input_too_long",
                           f"inputs: a text is longer than the model's {served.max_tokens} "
                           "tokens", "inputs")


def _seq(chunk: dict[str, Any]) -> Seq:
    """A pipeline's model inputs ([1, T] tensors) as one sequence for the batch."""
    return Seq({k: v[0] for k, v in chunk.items()
                if isinstance(v, torch.Tensor) and k in MODEL_INPUTS})


MODEL_INPUTS = {"input_ids", "attention_mask", "token_type_ids"}


async def token_classification(*, model_id: str, prefix: str, request: TokenRequest) -> Any:
    """[{entity_group, score, word, start, end}] for one input; a list of those for several.
    A text longer than the model's window is read in overlapping windows (the pipeline's
    `stride`), whose entities the pipeline's post-processing merges."""
    served = await load_async(model_id, prefix, "token-classification")
    per_text, post = await in_thread(_token_inputs, served, request)
    flat = [chunk for chunks in per_text for chunk in chunks]
    logits = iter(await infer(served, [_seq(chunk) for chunk in flat]))
    outputs = [[{**chunk, "logits": next(logits)} for chunk in chunks] for chunks in per_text]

    def entities() -> list[Any]:  # merging many windows' entities is work: off the loop
        return [served.pipe.postprocess(chunks, **post) for chunks in outputs]

    answers = await in_thread(entities)
    return _plain(answers[0] if isinstance(request.inputs, str) else answers)


def _token_inputs(served: Served, request: TokenRequest
                  ) -> tuple[list[list[dict[str, Any]]], dict[str, Any]]:
    texts = texts_of(request.inputs)
    params = request.parameters or TokenParameters()
    for label in params.ignore_labels or []:
        check_text(label, "parameters.ignore_labels")
    kwargs: dict[str, Any] = {"aggregation_strategy": params.aggregation_strategy}
    if params.ignore_labels is not None:
        kwargs["ignore_labels"] = params.ignore_labels
    pre, _, post = served.pipe._sanitize_parameters(**kwargs)
    size = served.window
    # Windows of `size` tokens, each overlapping the one before by a quarter.
    pre["tokenizer_params"] = {"return_overflowing_tokens": True, "padding": True,
                               "stride": size // 4 if size >= 8 else 0}
    with served.tokenizing:
        per_text = [list(served.pipe.preprocess(text, **pre)) for text in texts]
    if params.aggregation_strategy == "none" and any(len(c) > 1 for c in per_text):
        raise TooLarge("input_too_long", f"inputs: a text is longer than the model's "
                       f"{size}-token window; with parameters.aggregation_strategy other than "
                       "none, long texts are read in overlapping windows", "inputs")
    # At most one entity per token: the tokens bound the answer.
    check_outputs(sum(int(c["attention_mask"].sum()) for chunks in per_text for c in chunks),
                  "tokens", "inputs")
    return per_text, post
