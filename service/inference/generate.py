"""Text generation in the formats clients already speak to text-generation-inference and the
Hugging Face Inference API: `{"inputs", "parameters", "stream"}` answered with
`[{"generated_text", "details"?}]`, or with server-sent token events as TGI streams them
(what huggingface_hub's InferenceClient.text_generation parses). The decoding itself is
the model's loop in generation.py; this module checks a request against the bounds, turns it
into sequences for that loop and its events into answers. OpenAI's completions
(completions.py) start their sequences here too (`start`).
"""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from service.domain.refusals import Invalid, Unavailable
from service.inference.batcher import Overloaded
from service.inference.generation import Failed, Finished, Sampling, Sequence, Token
from service.inference.pipelines import (
    check_outputs,
    check_text,
    in_thread,
    load_async,
    texts_of,
    token_ids,
)
from service.inference.served import GENERATION, Served
from service.settings import get_settings


class GenerateParameters(BaseModel):
    """TGI's parameters (huggingface_hub sends each one it was given; None is left out)."""
    model_config = ConfigDict(extra="ignore")
    max_new_tokens: int = Field(default=50, ge=1)
    # Greedy unless do_sample, or (as TGI does) a temperature other than 1, a top_k or a
    # top_p below 1 is given; temperature 0 is greedy (OpenAI's spelling of it).
    do_sample: bool | None = None
    temperature: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(default=None, ge=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=100, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, le=2**64 - 1)
    return_full_text: bool = True
    # TGI's name, and the Hugging Face Inference API's older one.
    stop: list[str] = Field(default_factory=list,
                            validation_alias=AliasChoices("stop", "stop_sequences"))
    details: bool = False
    top_n_tokens: int | None = Field(default=None, ge=0, le=20)
    decoder_input_details: bool = False
    # TGI's that change the answer and are not supported here: refused when set (a 422
    # naming the parameter), never silently ignored.
    best_of: int | None = None
    typical_p: float | None = None
    frequency_penalty: float | None = None
    watermark: bool = False
    grammar: Any = None
    adapter_id: str | None = None
    truncate: int | None = None


UNSUPPORTED = {"best_of": 1, "typical_p": None, "frequency_penalty": None, "watermark": False,
               "grammar": None, "adapter_id": None, "truncate": None,
               "decoder_input_details": False}


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # HF clients may send "options" and the like
    inputs: str | list[str]
    parameters: GenerateParameters | None = None
    stream: bool = False


def sampling(*, do_sample: bool | None, temperature: float | None, top_p: float | None,
             top_k: int | None, repetition_penalty: float | None, seed: int | None
             ) -> Sampling:
    if temperature == 0:
        sample = False
    elif do_sample is not None:
        sample = do_sample
    else:
        sample = (temperature not in (None, 1.0) or top_k is not None
                  or (top_p is not None and top_p < 1))
    return Sampling(sample=sample, temperature=temperature or 1.0, top_k=top_k,
                    top_p=top_p if top_p is not None else 1.0,
                    repetition_penalty=repetition_penalty or 1.0, seed=seed)


@dataclass
class Ask:
    """What any format asks of the loop, with the names of the request's own parameters
    (for the refusals)."""
    texts: list[str]
    max_new_tokens: int
    sampling: Sampling
    stop: list[str] = field(default_factory=list)
    copies: int = 1  # sequences per text (OpenAI's n); seeds seed, seed + 1, ...
    top_n: int = 0
    token_text: bool = False
    max_new_tokens_param: str = "parameters.max_new_tokens"
    stop_param: str = "parameters.stop"
    inputs_param: str = "inputs"


class Stream:
    """One sequence's events on the caller's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Token | Failed] = asyncio.Queue()
        self.seq: Sequence | None = None
        self.prompt_tokens = 0

    def emit(self, event: Token | Failed) -> None:
        """Called on the model's thread."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the caller's loop is gone: nobody reads this sequence
            self.cancel()

    def cancel(self) -> None:
        if self.seq is not None:
            self.seq.cancel()

    async def tokens(self) -> AsyncIterator[Token]:
        """Its tokens, the last one with `end` set; a caller that stops reading frees its
        place in the batch."""
        try:
            while True:
                event = await self._queue.get()
                if isinstance(event, Failed):
                    if isinstance(event.error, Overloaded):
                        raise _unavailable(event.error)
                    raise event.error
                yield event
                if event.end is not None:
                    return
        finally:
            self.cancel()

    async def collect(self) -> tuple[list[Token], Finished]:
        tokens = [token async for token in self.tokens()]
        end = tokens[-1].end
        assert end is not None  # tokens() ends on the last one
        return tokens, end


def _unavailable(exc: Overloaded) -> Unavailable:
    return Unavailable("overloaded", f"this model is busy ({exc}); retry shortly",
                       retry_after_s=1)


def _checked(served: Served, ask: Ask) -> list[list[int]]:
    """The texts' token ids, each request refused before it is queued when past a bound."""
    settings = get_settings()
    if ask.max_new_tokens > settings.max_new_tokens:
        raise Invalid("invalid_request", f"{ask.max_new_tokens_param}: at most "
                      f"{settings.max_new_tokens}", ask.max_new_tokens_param)
    if len(ask.stop) > settings.max_stop_sequences:
        raise Invalid("invalid_request", f"{ask.stop_param}: at most "
                      f"{settings.max_stop_sequences} stop sequences", ask.stop_param)
    for stop in ask.stop:
        if not stop or len(stop) > settings.max_inference_chars:
            raise Invalid("invalid_request", f"{ask.stop_param}: each stop sequence holds 1 "
                          f"to {settings.max_inference_chars} characters", ask.stop_param)
        check_text(stop, ask.stop_param)
    check_outputs(len(ask.texts) * ask.copies * ask.max_new_tokens,
                  "new tokens (inputs x max new tokens)", ask.max_new_tokens_param)
    prompts = token_ids(served, ask.texts, ask.inputs_param)
    for ids in prompts:
        if not ids:
            raise Invalid("invalid_request", f"{ask.inputs_param}: a text of no tokens; give "
                          "the model something to continue", ask.inputs_param)
        total = len(ids) + ask.max_new_tokens
        if total > served.max_tokens:  # past its position table
            raise Invalid("invalid_request", f"{ask.max_new_tokens_param}: the input's "
                          f"{len(ids)} tokens and {ask.max_new_tokens} new ones are more than "
                          f"this model's {served.max_tokens} positions",
                          ask.max_new_tokens_param)
        if total * ask.copies > settings.generate_max_tokens:
            raise Invalid("invalid_request", f"{ask.max_new_tokens_param}: the input's "
                          f"{len(ids)} tokens and {ask.max_new_tokens} new ones (x "
                          f"{ask.copies}) are more than the {settings.generate_max_tokens} "
                          "a model generates for at once", ask.max_new_tokens_param)
    return prompts


async def start(model_id: str, prefix: str, ask: Ask) -> list[Stream]:
    """The request's sequences queued in the model's batch (all or none: a full queue is
    Unavailable, retry after a second), one Stream per text and copy, in order."""
    served = await load_async(model_id, prefix, GENERATION)
    assert served.generator is not None
    prompts = await in_thread(_checked, served, ask,
                              work=sum(len(t) for t in ask.texts) + len(ask.stop))
    loop = asyncio.get_running_loop()
    streams: list[Stream] = []
    for ids in prompts:
        for copy in range(ask.copies):
            stream = Stream(loop)
            seed = ask.sampling.seed
            stream.seq = Sequence(
                ids, ask.max_new_tokens,
                Sampling(**{**ask.sampling.__dict__,
                            "seed": None if seed is None else (seed + copy) % 2**64}),
                stream.emit, stop=ask.stop, top_n=ask.top_n, token_text=ask.token_text)
            stream.prompt_tokens = len(ids)
            streams.append(stream)
    if len(streams) > served.generator.max_queue:  # could never fit, however long one waits
        raise Invalid("invalid_request", f"{ask.inputs_param}: {len(streams)} sequences; "
                      f"at most {served.generator.max_queue} per request", ask.inputs_param)
    try:
        served.generator.submit([s.seq for s in streams if s.seq is not None])
    except Overloaded as exc:
        raise _unavailable(exc) from None
    return streams


def _ask(request: GenerateRequest) -> Ask:
    params = request.parameters or GenerateParameters()
    for name, default in UNSUPPORTED.items():
        value = getattr(params, name)
        if value is not None and value != default:
            raise Invalid("unsupported_parameter", f"parameters.{name}: not supported by "
                          "this server; leave it out", f"parameters.{name}")
    if params.top_k is not None and params.top_k > get_settings().max_top_k:
        raise Invalid("invalid_request", f"parameters.top_k: at most "
                      f"{get_settings().max_top_k}", "parameters.top_k")
    if request.stream and not isinstance(request.inputs, str):
        raise Invalid("invalid_request", "inputs: a stream continues one text; send a "
                      "string", "inputs")
    return Ask(texts=texts_of(request.inputs), max_new_tokens=params.max_new_tokens,
               sampling=sampling(do_sample=params.do_sample, temperature=params.temperature,
                                 top_p=params.top_p, top_k=params.top_k,
                                 repetition_penalty=params.repetition_penalty,
                                 seed=params.seed),
               stop=params.stop, top_n=params.top_n_tokens or 0,
               token_text=request.stream or params.details)


def _token(token: Token) -> dict[str, Any]:
    return {"id": token.id, "text": token.text, "logprob": token.logprob,
            "special": token.special}


def _top(token: Token) -> list[dict[str, Any]]:
    return [{"id": i, "text": text, "logprob": p, "special": False}
            for i, text, p in token.top]


async def generate(*, model_id: str, prefix: str, request: GenerateRequest) -> Any:
    """[{"generated_text", "details"?}] for one input; a list of those for several (as the
    pipeline answers a list). The text is the prompt and its continuation unless
    return_full_text is false; with a stop sequence it ends with that sequence (as TGI)."""
    ask = _ask(request)
    params = request.parameters or GenerateParameters()
    streams = await start(model_id, prefix, ask)
    results = await asyncio.gather(*(s.collect() for s in streams))
    answers = []
    for text, (tokens, finished) in zip(ask.texts, results, strict=True):
        answer: dict[str, Any] = {"generated_text": (text if params.return_full_text else "")
                                  + finished.text}
        if params.details:
            answer["details"] = {
                "finish_reason": finished.reason, "generated_tokens": finished.tokens,
                "seed": finished.seed, "prefill": [],
                "tokens": [_token(t) for t in tokens],
                "top_tokens": [_top(t) for t in tokens] if ask.top_n else None}
        answers.append([answer])
    return answers[0] if isinstance(request.inputs, str) else answers


async def generate_stream(*, model_id: str, prefix: str, request: GenerateRequest
                          ) -> AsyncIterator[dict[str, Any]]:
    """TGI's stream: one event per token, {"index", "token", "generated_text": null,
    "details": null}, the last one with the whole text and (with details) the finish
    reason. Refusals come before the first event (the request is queued by then); a
    failure after it is an event {"error", "error_type"}, as TGI sends it."""
    ask = _ask(request)
    params = request.parameters or GenerateParameters()
    [stream] = await start(model_id, prefix, ask)
    prompt = request.inputs if params.return_full_text else ""
    return _tgi_events(stream, str(prompt), params.details)


async def _tgi_events(stream: Stream, prompt: str, details: bool
                      ) -> AsyncIterator[dict[str, Any]]:
    try:
        index = 0
        async for token in stream.tokens():
            index += 1
            top = _top(token) or None
            event = {"index": index, "token": _token(token), "top_tokens": top,
                     "generated_text": None, "details": None}
            end = token.end
            if end is not None:
                event["generated_text"] = prompt + end.text
                if details:
                    event["details"] = {"finish_reason": end.reason,
                                        "generated_tokens": end.tokens, "seed": end.seed,
                                        "input_length": stream.prompt_tokens}
            yield event
    except Unavailable as exc:
        yield {"error": exc.message, "error_type": "overloaded"}
    except Exception:  # the log has it (generation.py); never a stack trace to the client
        yield {"error": "generation failed", "error_type": "generation"}

