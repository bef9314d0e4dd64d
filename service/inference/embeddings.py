"""Embeddings in the wire formats clients already speak: the Hugging Face Inference API's
feature-extraction (as text-embeddings-inference answers it: one vector per input) and
sentence-similarity, and OpenAI's /v1/embeddings.

Any model serves them: an imported base model or sentence-transformers directory as its
pooling files say, every other model (its encoder) by mean pooling. The vectors come from
the model's batches (served.py pools them in the pass); a large request goes in slices of
one batch each, so other requests' sequences run between its slices instead of behind all
of it.
"""

import base64
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from service.domain.refusals import Invalid, TooLarge
from service.inference.pipelines import check_text, in_thread, infer, load_async
from service.inference.served import FEATURE_EXTRACTION, Seq, Served
from service.settings import get_settings


class FeatureExtractionRequest(BaseModel):
    # The HF spec's parameters sit beside "inputs" (huggingface_hub sends them so).
    model_config = ConfigDict(extra="ignore")
    inputs: str | list[str]
    normalize: bool | None = Field(default=None, description="unit-length vectors; by "
                                   "default as the model's sentence-transformers files say")
    truncate: bool | None = Field(default=None, description="cut texts longer than the "
                                  "model embeds (default); false: such a text is a 413")
    truncation_direction: Literal["left", "right", "Left", "Right"] | None = None
    prompt_name: str | None = Field(default=None, max_length=100)


class SimilarityInputs(BaseModel):
    model_config = ConfigDict(extra="ignore")
    source_sentence: str
    sentences: list[str]


class SentenceSimilarityRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    inputs: SimilarityInputs


class EmbeddingsRequest(BaseModel):
    """OpenAI's POST /v1/embeddings (`user` and unknown keys are accepted and ignored)."""
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=64)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)


@dataclass
class Embedded:
    vectors: list[torch.Tensor]
    tokens: int  # input tokens read (OpenAI's usage)


def _texts(texts: list[str], param: str) -> list[str]:
    settings = get_settings()
    if not texts:
        raise Invalid("invalid_request", f"{param}: give at least one text", param)
    if len(texts) > settings.max_embedding_inputs:
        raise TooLarge("too_many_inputs", f"{param}: at most "
                       f"{settings.max_embedding_inputs} texts per request", param)
    for text in texts:
        if len(text) > settings.max_inference_chars:
            raise TooLarge("input_too_long", f"{param}: each text may hold at most "
                           f"{settings.max_inference_chars} characters", param)
        check_text(text, param)
    return texts


def _tokenize(served: Served, texts: list[str], truncate: bool, direction: str,
              param: str) -> list[Seq]:
    tokenizer = served.tokenizer
    with served.tokenizing:
        side = tokenizer.truncation_side
        tokenizer.truncation_side = direction
        try:
            encoded = tokenizer(texts, truncation=truncate, max_length=served.window)
        finally:
            tokenizer.truncation_side = side
    names = [n for n in served.input_names if n in encoded]
    seqs = []
    for i in range(len(texts)):
        if len(encoded["input_ids"][i]) > served.window:
            raise TooLarge("input_too_long", f"{param}: a text of "
                           f"{len(encoded['input_ids'][i])} tokens is longer than the "
                           f"{served.window} this model embeds; leave truncation on to cut it",
                           param)
        seqs.append(Seq({n: torch.tensor(encoded[n][i]) for n in names}))
    return seqs


def _token_seqs(served: Served, rows: list[list[int]]) -> list[Seq]:
    """OpenAI's token-id input: the ids as given (checked against the vocabulary), with the
    model's special tokens around them as its tokenizer adds them to a text, cut to the
    window."""
    settings = get_settings()
    if not rows or any(not row for row in rows):
        raise Invalid("invalid_request", "input: give at least one token", "input")
    if len(rows) > settings.max_embedding_inputs:
        raise TooLarge("too_many_inputs", "input: at most "
                       f"{settings.max_embedding_inputs} inputs per request", "input")
    before, after = _special_tokens(served)
    seqs = []
    for row in rows:
        if len(row) > settings.max_inference_chars:
            raise TooLarge("input_too_long", "input: at most "
                           f"{settings.max_inference_chars} tokens per input", "input")
        if min(row) < 0 or max(row) >= served.vocab_size:
            raise Invalid("invalid_request", "input: token ids must lie in 0.."
                          f"{served.vocab_size - 1}, this model's vocabulary", "input")
        seqs.append(Seq({"input_ids": torch.tensor((before + row)[:served.window - len(after)]
                                                   + after)}))
    return seqs


def _special_tokens(served: Served) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text's own tokens (BERT's
    [CLS] and [SEP], RoBERTa's <s> and </s>, none for GPT-2), read off one encoded word."""
    with served.tokenizing:
        encoded = served.tokenizer("a")
    ids, which = encoded["input_ids"], encoded.sequence_ids()
    own = [i for i, s in enumerate(which) if s == 0] or [len(ids)]
    return ids[:own[0]], ids[own[-1] + 1:]


async def _run(served: Served, seqs: list[Seq]) -> list[torch.Tensor]:
    """Pooled vectors, by slices of one batch (longest last, so each slice pads little)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    step = served.batcher.max_batch if served.batcher is not None else len(seqs)
    out: list[torch.Tensor] = [torch.empty(0)] * len(seqs)
    for start in range(0, len(order), step):
        part = order[start:start + step]
        for i, vector in zip(part, await infer(served, [seqs[i] for i in part]), strict=True):
            out[i] = vector
    return out


def _normalized(vectors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.nn.functional.normalize(v, dim=0) for v in vectors]


async def _embed_texts(model_id: str, prefix: str, texts: list[str], *, truncate: bool,
                       direction: str, prompt_name: str | None, param: str
                       ) -> tuple[Served, Embedded]:
    served = await load_async(model_id, prefix, FEATURE_EXTRACTION)
    name = prompt_name or served.pooling.default_prompt_name
    if name is not None:
        if name not in served.pooling.prompts:
            known = ", ".join(served.pooling.prompts) or "none"
            raise Invalid("invalid_request", f"prompt_name: this model's prompts are "
                          f"{known}", "prompt_name")
        if not served.pooling.include_prompt:
            raise Invalid("invalid_request", "prompt_name: this model pools without its "
                          "prompt's tokens (include_prompt: false), which Cloze does not "
                          "serve; send the prompt text as part of the input", "prompt_name")
        texts = [served.pooling.prompts[name] + text for text in texts]
    seqs = await in_thread(_tokenize, served, texts, truncate, direction, param,
                           work=sum(map(len, texts)))
    return served, Embedded(await _run(served, seqs), sum(len(s) for s in seqs))


async def feature_extraction(*, model_id: str, prefix: str,
                             request: FeatureExtractionRequest) -> list[list[float]]:
    """One vector per input, a list of them even for one text (as TEI answers)."""
    texts = _texts([request.inputs] if isinstance(request.inputs, str) else request.inputs,
                   "inputs")
    direction = (request.truncation_direction or "right").lower()
    served, embedded = await _embed_texts(
        model_id, prefix, texts, truncate=request.truncate is not False, direction=direction,
        prompt_name=request.prompt_name, param="inputs")
    normalize = served.pooling.normalize if request.normalize is None else request.normalize
    vectors = _normalized(embedded.vectors) if normalize else embedded.vectors
    return [v.tolist() for v in vectors]


async def sentence_similarity(*, model_id: str, prefix: str,
                              request: SentenceSimilarityRequest) -> list[float]:
    """The cosine of the source sentence's embedding with each sentence's."""
    texts = _texts([request.inputs.source_sentence, *request.inputs.sentences],
                   "inputs.sentences")
    if len(texts) < 2:
        raise Invalid("invalid_request", "inputs.sentences: give at least one sentence",
                      "inputs.sentences")
    _, embedded = await _embed_texts(model_id, prefix, texts, truncate=True,
                                     direction="right", prompt_name=None, param="inputs")
    source, *others = _normalized(embedded.vectors)
    return [float(source @ other) for other in others]


async def openai_embeddings(*, model_id: str, prefix: str,
                            request: EmbeddingsRequest) -> dict[str, Any]:
    """OpenAI's answer: unit-length vectors (as OpenAI's are; with `dimensions`, the first
    that many, normalised again, as its text-embedding-3 models do), floats or base64 of
    little-endian float32, and the tokens read as usage."""
    given = request.input
    texts: list[str] | None = [given] if isinstance(given, str) else None
    if isinstance(given, list) and given and all(isinstance(x, str) for x in given):
        texts = [x for x in given if isinstance(x, str)]
    if texts is not None or not given:  # [] is no text at all
        texts = _texts(texts or [], "input")
        _, embedded = await _embed_texts(model_id, prefix, texts, truncate=True,
                                         direction="right", prompt_name=None, param="input")
    else:
        assert isinstance(given, list)
        rows = [given] if isinstance(given[0], int) else given
        served = await load_async(model_id, prefix, FEATURE_EXTRACTION)
        seqs = _token_seqs(served, rows)  # type: ignore[arg-type]
        embedded = Embedded(await _run(served, seqs), sum(len(s) for s in seqs))
    vectors = embedded.vectors
    if request.dimensions is not None:
        width = int(vectors[0].shape[0])
        if request.dimensions > width:
            raise Invalid("invalid_request", f"dimensions: this model's embeddings have "
                          f"{width}", "dimensions")
        vectors = [v[:request.dimensions] for v in vectors]
    vectors = _normalized(vectors)
    data = [{"object": "embedding", "index": i, "embedding": _encode(v, request.encoding_format)}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": request.model,
            "usage": {"prompt_tokens": embedded.tokens, "total_tokens": embedded.tokens}}


def _encode(vector: torch.Tensor, encoding: str) -> list[float] | str:
    if encoding == "base64":
        raw = vector.to(torch.float32).numpy().astype("<f4").tobytes()
        return base64.b64encode(raw).decode("ascii")
    return [x if math.isfinite(x) else 0.0 for x in vector.tolist()]
