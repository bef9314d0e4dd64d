"""Extractive question answering in the Hugging Face Inference API format: {"inputs":
{"question", "context"}} -> {"answer", "score", "start", "end"}, what huggingface_hub's
InferenceClient.question_answering sends and parses.

transformers 5 dropped its question-answering pipeline, so the reading is done here, as that
pipeline (transformers 4) did it, so answers and scores are the ones it gave on the same
export: the question and the context in windows of max_seq_len tokens overlapping by
doc_stride; in each window the start and end logits softmaxed over the context's tokens (and
[CLS]); a span's score the product of its start and end probabilities, spans of at most
max_answer_len tokens; the answer widened to whole words (align_to_words), the scores of
spans that give the same answer (case aside) summed; with handle_impossible_answer, ""
scored by the smallest [CLS] x [CLS] product of the windows.
"""

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from service.domain.refusals import Invalid, TooLarge
from service.inference.pipelines import call, check_outputs, check_text, check_top_k, load
from service.inference.served import Served
from service.settings import get_settings
from service.transformers_import import transformers

TASK = "question-answering"
MAX_SEQ_LEN = 384  # the pipeline's default window, if the model takes that many tokens
MAX_STRIDE = 128  # and its default overlap, at most half the window
MAX_ANSWER_LEN = 15  # tokens, by default
BATCH = 16  # windows per forward pass


class QuestionContext(BaseModel):
    model_config = ConfigDict(extra="ignore")
    question: str = Field(min_length=1)
    context: str = Field(min_length=1)


class QuestionAnsweringParameters(BaseModel):
    """The Hugging Face Inference API's question-answering parameters."""

    model_config = ConfigDict(extra="ignore")
    top_k: int | None = Field(default=None, ge=1)
    doc_stride: int | None = Field(default=None, ge=0)
    max_answer_len: int | None = Field(default=None, ge=1)
    max_seq_len: int | None = Field(default=None, ge=8)
    max_question_len: int | None = Field(default=None, ge=1)  # accepted, as the pipeline's
    handle_impossible_answer: bool = False
    align_to_words: bool = True


class QuestionAnsweringRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # HF clients may send "options" and the like
    inputs: QuestionContext | list[QuestionContext]
    parameters: QuestionAnsweringParameters | None = None


class SpanReader:
    """What serving keeps of a question-answering model: its tokenizer and its model (the
    attributes Served reads of a transformers pipeline)."""

    def __init__(self, directory: Path) -> None:
        t = transformers()
        self.tokenizer = t.AutoTokenizer.from_pretrained(str(directory))
        self.model = t.AutoModelForQuestionAnswering.from_pretrained(str(directory),
                                                                      use_safetensors=True)
        self.device = "cpu"
        if not self.tokenizer.is_fast:
            raise Invalid("invalid_model", "question answering needs a fast tokenizer "
                                           "(character offsets of tokens)")


def reader(directory: Path) -> SpanReader:
    return SpanReader(directory)


async def question_answering(*, model_id: str, prefix: str, request: QuestionAnsweringRequest
                             ) -> Any:
    """{answer, score, start, end} for one input (a list of top_k of them when top_k > 1);
    a list of those for a list of inputs. Runs on the models' own threads."""
    return await call(_answer, model_id=model_id, prefix=prefix, request=request)


def _answer(*, model_id: str, prefix: str, request: QuestionAnsweringRequest) -> Any:
    settings = get_settings()
    items = request.inputs if isinstance(request.inputs, list) else [request.inputs]
    if not items:
        raise Invalid("invalid_request", "inputs: give at least one question and context",
                      "inputs")
    if len(items) > settings.max_inference_inputs:
        raise TooLarge("too_many_inputs", f"inputs: at most {settings.max_inference_inputs} "
                       "questions per request", "inputs")
    for item in items:
        for name in ("question", "context"):
            text = getattr(item, name)
            if len(text) > settings.max_inference_chars:
                raise TooLarge("input_too_long", f"inputs.{name}: at most "
                               f"{settings.max_inference_chars} characters", f"inputs.{name}")
            check_text(text, f"inputs.{name}")
    params = request.parameters or QuestionAnsweringParameters()
    top_k = check_top_k(params.top_k, 1)
    check_outputs(len(items) * top_k, "answers (inputs x top_k)", "parameters.top_k")
    served = load(model_id, prefix, TASK)
    max_seq_len = params.max_seq_len or min(served.window, MAX_SEQ_LEN)
    if max_seq_len > served.max_tokens:
        raise Invalid("invalid_request", f"parameters.max_seq_len: at most this model's "
                      f"{served.max_tokens} tokens", "parameters.max_seq_len")
    doc_stride = params.doc_stride if params.doc_stride is not None else \
        min(max_seq_len // 2, MAX_STRIDE)
    if doc_stride >= max_seq_len:
        raise Invalid("invalid_request", "parameters.doc_stride: must be less than max_seq_len "
                      f"({max_seq_len})", "parameters.doc_stride")
    max_answer_len = params.max_answer_len or MAX_ANSWER_LEN
    with served.lock, served.tokenizing:
        answers = [read(served, item, max_seq_len=max_seq_len, doc_stride=doc_stride,
                        top_k=top_k, max_answer_len=max_answer_len,
                        handle_impossible=params.handle_impossible_answer,
                        align_to_words=params.align_to_words) for item in items]
    return answers if isinstance(request.inputs, list) else answers[0]


def _windows(served: Served, item: QuestionContext, max_seq_len: int, doc_stride: int) -> Any:
    tokenizer = served.tokenizer
    question_ids = tokenizer(item.question, add_special_tokens=False)["input_ids"]
    special = tokenizer.num_special_tokens_to_add(pair=True)
    if len(question_ids) + special + doc_stride >= max_seq_len:
        raise Invalid("invalid_request", f"inputs.question: its {len(question_ids)} tokens and "
                      f"doc_stride ({doc_stride}) leave no room for the context in windows of "
                      f"max_seq_len ({max_seq_len}) tokens", "inputs.question")
    encoded = tokenizer(item.question, item.context, truncation="only_second",
                        max_length=max_seq_len, stride=doc_stride, return_token_type_ids=True,
                        return_overflowing_tokens=True, return_offsets_mapping=True)
    limit = get_settings().inference_max_queue
    if len(encoded["input_ids"]) > limit:
        raise TooLarge("too_many_sequences", f"inputs.context: read in more than {limit} "
                       "windows; send a shorter context or a larger max_seq_len",
                       "inputs.context")
    return encoded


def read(served: Served, item: QuestionContext, *, max_seq_len: int, doc_stride: int,
         top_k: int, max_answer_len: int, handle_impossible: bool, align_to_words: bool
         ) -> dict[str, Any] | list[dict[str, Any]]:
    """The answers to one question (called under the model's lock)."""
    import torch

    encoded = _windows(served, item, max_seq_len, doc_stride)
    tokenizer = served.tokenizer
    rows = len(encoded["input_ids"])
    names = [n for n in served.input_names if n in encoded]
    start_logits: list[np.ndarray] = []
    end_logits: list[np.ndarray] = []
    with torch.inference_mode():
        torch.set_num_threads(served.threads)
        for first in range(0, rows, BATCH):  # windows of one text: all full but the last
            chunk = range(first, min(first + BATCH, rows))
            width = max(len(encoded["input_ids"][w]) for w in chunk)
            batch = {n: torch.zeros((len(chunk), width), dtype=torch.long) for n in names}
            batch["input_ids"].fill_(served.pad_id)
            for row, w in enumerate(chunk):
                for n in names:
                    values = encoded[n][w]
                    batch[n][row, :len(values)] = torch.tensor(values)
            out = served.model(**batch)
            for row, w in enumerate(chunk):
                length = len(encoded["input_ids"][w])
                start_logits.append(out.start_logits[row, :length].float().numpy())
                end_logits.append(out.end_logits[row, :length].float().numpy())
    candidates: list[dict[str, Any]] = []
    null_score = 1e6
    cls_id = tokenizer.cls_token_id
    for w in range(rows):
        # Tokens an answer may hold: the context's, and [CLS] (no answer).
        allowed = np.array([s == 1 for s in encoded.sequence_ids(w)])
        if cls_id is not None:
            allowed |= np.array(encoded["input_ids"][w]) == cls_id
        allowed &= np.array(encoded["attention_mask"][w], dtype=bool)
        start = _softmax(np.where(allowed, start_logits[w], -10000.0))
        end = _softmax(np.where(allowed, end_logits[w], -10000.0))
        if handle_impossible:
            null_score = min(null_score, float(start[0] * end[0]))
        start[0] = end[0] = 0.0
        # More spans than asked for: widened to words, several may become the same answer.
        wanted = 2 * top_k + 10 if align_to_words else top_k
        for s, e, score in _top_spans(start, end, wanted, max_answer_len, allowed):
            begin, finish = _characters(encoded[w], s, e, align_to_words)
            text = item.context[begin:finish]
            same = next((a for a in candidates if a["answer"].lower() == text.lower()), None)
            if same is not None:  # the same answer from another span or window: summed
                same["score"] += score
            else:
                candidates.append({"score": score, "start": begin, "end": finish,
                                   "answer": text})
    if handle_impossible:
        candidates.append({"score": null_score, "start": 0, "end": 0, "answer": ""})
    answers = sorted(candidates, key=lambda a: a["score"], reverse=True)[:top_k]
    return answers[0] if len(answers) == 1 else answers


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _top_spans(start: np.ndarray, end: np.ndarray, top_k: int, max_answer_len: int,
               allowed: np.ndarray) -> list[tuple[int, int, float]]:
    """The top_k (start, end, probability product) spans with start <= end < start +
    max_answer_len, best first, whose both ends are allowed tokens."""
    scores = np.tril(np.triu(np.outer(start, end)), max_answer_len - 1).ravel()
    if top_k == 1:
        best = np.array([np.argmax(scores)])
    elif len(scores) < top_k:
        best = np.argsort(-scores)
    else:
        part = np.argpartition(-scores, top_k)[:top_k]
        best = part[np.argsort(-scores[part])]
    width = len(end)
    return [(int(i // width), int(i % width), float(scores[i])) for i in best
            if allowed[i // width] and allowed[i % width]]


def _characters(encoding: Any, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
    """The characters of tokens s..e in the context; with align_to_words, widened to the
    words they fall in."""
    if align_to_words:
        try:
            first = encoding.word_to_chars(encoding.token_to_word(s), sequence_index=1)
            last = encoding.word_to_chars(encoding.token_to_word(e), sequence_index=1)
            return int(first[0]), int(last[1])
        except Exception:  # a token of no word (the tokenizer's): its own offsets
            pass
    return int(encoding.offsets[s][0]), int(encoding.offsets[e][1])
