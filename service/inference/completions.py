"""OpenAI's completions (POST /v1/completions) on a Cloze text-generation model, as the
`openai` client sends and parses them: prompt (a text or a list), max_tokens, temperature,
top_p, stop, seed, n, logprobs, echo, stream (chunks, then `[DONE]`, with usage when
stream_options.include_usage). The sequences run in the model's batch like /generate's
(generate.start); this module speaks OpenAI's format.

OpenAI's rules where they differ from TGI's: sampling by default (temperature 1; 0 is
greedy), and the text stops before a stop sequence (TGI keeps it); a streamed choice holds
back text that may be the start of a stop sequence until it knows.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.domain.refusals import Invalid, Unavailable
from service.inference.generate import Ask, Stream, start
from service.inference.generation import Finished, Sampling, Token
from service.inference.pipelines import texts_of

REASON = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """OpenAI's POST /v1/completions (`user` and unknown keys are accepted and ignored)."""
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=64)
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(default=1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    # OpenAI's that change the answer and are not supported here: refused when set.
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    best_of: int | None = None
    logit_bias: dict[str, float] | None = None
    suffix: str | None = None


def _ask(request: CompletionRequest) -> Ask:
    for name, neutral in (("frequency_penalty", 0), ("presence_penalty", 0), ("best_of", 1),
                          ("logit_bias", {}), ("suffix", "")):
        value = getattr(request, name)
        if value is not None and value != neutral:
            raise Invalid("unsupported_parameter", f"{name}: not supported by this server; "
                          "leave it out", name)
    if request.echo and request.logprobs is not None:
        raise Invalid("unsupported_parameter", "echo: not supported with logprobs (the "
                      "prompt's log-probs are not computed)", "echo")
    temperature = 1.0 if request.temperature is None else request.temperature
    stop = [request.stop] if isinstance(request.stop, str) else request.stop or []
    return Ask(texts=texts_of(request.prompt, "prompt"),
               max_new_tokens=request.max_tokens or 16,
               sampling=Sampling(sample=temperature > 0, temperature=temperature or 1.0,
                                 top_p=request.top_p if request.top_p is not None else 1.0,
                                 seed=request.seed),
               stop=stop, copies=request.n, top_n=request.logprobs or 0,
               token_text=request.stream or request.logprobs is not None,
               max_new_tokens_param="max_tokens", stop_param="stop", inputs_param="prompt")


def _text(end: Finished) -> str:
    """The choice's text: OpenAI's stops before the stop sequence."""
    return end.text if end.stop_at is None else end.text[:end.stop_at]


def _logprobs(tokens: list[Token], offset: int) -> dict[str, Any]:
    """OpenAI's legacy logprobs: each token, its log-prob, the likeliest alternatives and
    where in the text it starts."""
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token.text)
    return {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{text: p for _, text, p in t.top} for t in tokens],
            "text_offset": offsets}


def _head(request: CompletionRequest) -> dict[str, Any]:
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": request.model}


def _usage(streams: list[Stream], copies: int, completion: int) -> dict[str, int]:
    prompt = sum(s.prompt_tokens for s in streams[::copies])  # each prompt once
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


async def complete(*, model_id: str, prefix: str, request: CompletionRequest
                   ) -> dict[str, Any]:
    ask = _ask(request)
    streams = await start(model_id, prefix, ask)
    results = await asyncio.gather(*(s.collect() for s in streams))
    choices = []
    for index, (tokens, end) in enumerate(results):
        echo = ask.texts[index // ask.copies] if request.echo else ""
        choices.append({"text": echo + _text(end), "index": index,
                        "logprobs": None if request.logprobs is None
                        else _logprobs(tokens, len(echo)),
                        "finish_reason": REASON[end.reason]})
    completion = sum(end.tokens for _, end in results)
    return {**_head(request), "choices": choices,
            "usage": _usage(streams, ask.copies, completion)}


async def stream(*, model_id: str, prefix: str, request: CompletionRequest
                 ) -> AsyncIterator[dict[str, Any]]:
    """OpenAI's chunks: each choice's text as it is made (choices interleaved, each chunk
    naming its index), its last chunk with its finish_reason; then the usage when asked.
    Refusals come before the first chunk; a failure after it is a chunk {"error"}."""
    ask = _ask(request)
    streams = await start(model_id, prefix, ask)
    usage = request.stream_options is not None and request.stream_options.include_usage
    return _chunks(request, ask, streams, usage)


async def _chunks(request: CompletionRequest, ask: Ask, streams: list[Stream], usage: bool
                  ) -> AsyncIterator[dict[str, Any]]:
    head = _head(request)
    merged: asyncio.Queue[tuple[int, Token | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: Stream) -> None:
        try:
            async for token in stream.tokens():
                merged.put_nowait((index, token))
        except Exception as exc:  # handed to the reader
            merged.put_nowait((index, exc))
        merged.put_nowait((index, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    pending = len(tasks)
    held = [_Held(ask.stop) for _ in streams]
    completion = 0
    try:
        if request.echo:
            for index in range(len(streams)):
                yield _chunk(head, index, ask.texts[index // ask.copies], None)
        while pending:
            index, item = await merged.get()
            if item is None:
                pending -= 1
                continue
            if isinstance(item, BaseException):
                message = item.message if isinstance(item, Unavailable) else \
                    "generation failed"
                yield {"error": {"message": message, "type": "server_error",
                                 "code": getattr(item, "code", "internal_error")}}
                return
            text = held[index].add(item)
            logprobs = None if request.logprobs is None else \
                _logprobs([item], held[index].sent - len(text))
            if item.end is not None:
                completion += item.end.tokens
                yield _chunk(head, index, text, REASON[item.end.reason], logprobs)
            elif text or logprobs is not None:
                yield _chunk(head, index, text, None, logprobs)
        if usage:
            yield {**head, "choices": [],
                   "usage": _usage(streams, ask.copies, completion)}
    finally:
        for task in tasks:  # a client gone: its sequences leave the batch
            task.cancel()


def _chunk(head: dict[str, Any], index: int, text: str, reason: str | None,
           logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**head, "choices": [{"text": text, "index": index, "logprobs": logprobs,
                                 "finish_reason": reason}]}


class _Held:
    """A streamed choice's text, sent as far as it cannot be the start of a stop
    sequence (OpenAI's text ends before the stop sequence)."""

    def __init__(self, stop: list[str]) -> None:
        self.stop, self.text, self.sent = stop, "", 0

    def add(self, token: Token) -> str:
        """The text that may be sent now."""
        self.text += token.text
        if token.end is not None:  # the final text, which the pieces add up to
            final = _text(token.end)
            out, self.sent = final[self.sent:], len(final)
            return out
        safe = len(self.text) - max((k for s in self.stop for k in range(len(s), 0, -1)
                                     if self.text.endswith(s[:k])), default=0)
        out = self.text[self.sent:safe] if safe > self.sent else ""
        self.sent = max(self.sent, safe)
        return out
