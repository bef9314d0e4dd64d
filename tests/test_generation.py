"""Generation for many callers (issue 25 item 3), in-process: the decoding loop
(service/inference/generation.py) batches sequences that join and leave at any step, and
its greedy output is transformers' pipeline's for GPT-2 and Llama, alone and batched with
prompts of different lengths; a seed repeats a sample whatever else runs beside it; stop
sequences, the repetition penalty and cancelled callers; then /generate through the app:
TGI's stream concatenates to the non-streamed text, details carry log-probs, bounds are
422s naming the parameter, a full queue is a 503 with Retry-After while /health answers.
Tiny models built here from a config (nothing downloaded, no training)."""

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests import inference_helpers as helpers
from tests.inference_helpers import clear_caches, publish

PROMPTS = ["the quick brown fox", "paris",
           "a small cat sleeps under an old tree near the river and the dog", "london england"]
LIMITS = {"CLOZE_GENERATE_MAX_BATCH": "4", "CLOZE_GENERATE_MAX_QUEUE": "4",
          "CLOZE_GENERATE_MAX_TOKENS": "2000", "CLOZE_MAX_NEW_TOKENS": "200",
          "CLOZE_RATE_LIMIT_PER_MINUTE": "0"}


def gpt2(out: Path) -> Path:
    """A 2-layer GPT-2 whose large initial weights make varied (not all-EOS) greedy text."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    helpers.tokenizer(out / "tok")
    tok = AutoTokenizer.from_pretrained(out / "tok")
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128,
                               vocab_size=len(tok), eos_token_id=tok.sep_token_id,
                               bos_token_id=tok.cls_token_id, initializer_range=0.5)
                    ).save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    return out / "model"


def llama(out: Path) -> Path:
    """A 2-layer Llama (rotary positions, grouped-query attention)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    helpers.tokenizer(out / "tok")
    tok = AutoTokenizer.from_pretrained(out / "tok")
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2,
                                 vocab_size=len(tok), max_position_embeddings=128,
                                 eos_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id,
                                 pad_token_id=tok.pad_token_id)).save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    return out / "model"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("generation-models")
    return {"gpt2": gpt2(tmp / "gpt2"), "llama": llama(tmp / "llama")}


@pytest.fixture(scope="module")
def pipes(models: dict[str, Path]) -> dict[str, Any]:
    from transformers import pipeline

    return {name: pipeline("text-generation", model=str(d), device="cpu")
            for name, d in models.items()}


def reference(pipe: Any, prompt: str, **kwargs: Any) -> str:
    return pipe(prompt, do_sample=False, return_full_text=False, **kwargs)[0]["generated_text"]


class Collected:
    """A sequence's events, gathered on the model's thread."""

    def __init__(self) -> None:
        self.tokens: list[Any] = []
        self.error: BaseException | None = None
        self.done = threading.Event()

    def emit(self, event: Any) -> None:
        from service.inference.generation import Failed

        if isinstance(event, Failed):
            self.error = event.error
            self.done.set()
            return
        self.tokens.append(event)
        if event.end is not None:
            self.done.set()

    @property
    def end(self) -> Any:
        assert self.done.wait(60), "the sequence never finished"
        assert self.error is None, self.error
        return self.tokens[-1].end


def generator(pipe: Any, **bounds: int) -> Any:
    from service.inference.generation import Generator

    return Generator(pipe.model, pipe.tokenizer, threading.Lock(),
                     **{"max_batch": 8, "max_queue": 32, "max_tokens": 10_000, **bounds},
                     name="test")


def sequence(pipe: Any, prompt: str, new: int = 20, **kwargs: Any) -> tuple[Any, Collected]:
    from service.inference.generation import Sampling, Sequence

    out = Collected()
    sampling = kwargs.pop("sampling", Sampling())
    return Sequence(pipe.tokenizer(prompt)["input_ids"], new, sampling, out.emit,
                    **kwargs), out


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_batched_greedy_equals_alone_equals_the_pipeline(pipes, name):
    pipe = pipes[name]
    expected = [reference(pipe, p, max_new_tokens=20) for p in PROMPTS]
    assert len(set(expected)) > 1 and any(expected)  # the model says something varied
    gen = generator(pipe)
    try:
        alone = []
        for prompt in PROMPTS:  # one at a time
            seq, out = sequence(pipe, prompt)
            gen.submit([seq])
            alone.append(out.end.text)
        assert alone == expected
        # All together, and joining a batch already under way: rows of different lengths,
        # left-padded, some leaving (EOS) while others go on.
        first, out0 = sequence(pipe, PROMPTS[0], 40)
        gen.submit([first])
        time.sleep(0.02)
        rest = [sequence(pipe, p) for p in PROMPTS[1:]]
        gen.submit([s for s, _ in rest])
        assert [o.end.text for _, o in rest] == expected[1:]
        assert out0.end.text == reference(pipe, PROMPTS[0], max_new_tokens=40)
        assert gen.most_running > 1
        # Streamed pieces concatenate to the text; finish reasons as TGI names them
        for _, out in rest:
            assert "".join(t.text for t in out.tokens) == out.end.text
            assert out.end.reason in {"eos_token", "length"} and out.end.tokens == len(out.tokens)
    finally:
        gen.close()


def test_repetition_penalty_and_stop_sequences(pipes):
    from service.inference.generation import Sampling

    pipe = pipes["gpt2"]
    gen = generator(pipe)
    try:
        seq, out = sequence(pipe, PROMPTS[1], 20, sampling=Sampling(repetition_penalty=1.8))
        gen.submit([seq])
        assert out.end.text == reference(pipe, PROMPTS[1], max_new_tokens=20,
                                         repetition_penalty=1.8)
        full = reference(pipe, PROMPTS[1], max_new_tokens=20)
        words = full.split()
        stop = " ".join(words[2:4])  # spans two tokens
        seq, out = sequence(pipe, PROMPTS[1], 20, stop=[stop, "never said"])
        gen.submit([seq])
        end = out.end
        assert end.reason == "stop_sequence" and end.text.endswith(stop)
        assert full.startswith(end.text) and end.stop_at == len(end.text) - len(stop)
    finally:
        gen.close()


def test_a_seed_repeats_a_sample_alone_or_batched(pipes):
    from service.inference.generation import Sampling

    pipe = pipes["llama"]
    gen = generator(pipe)
    sampled = Sampling(sample=True, temperature=1.5, top_k=50, top_p=0.95, seed=11)
    try:
        seq, alone = sequence(pipe, PROMPTS[0], 20, sampling=sampled)
        gen.submit([seq])
        alone.end  # noqa: B018 (waits)
        batch = [sequence(pipe, p, 20, sampling=sampled) for p in PROMPTS]
        gen.submit([s for s, _ in batch])
        assert batch[0][1].end.text == alone.end.text and alone.end.seed == 11
        other, out = sequence(pipe, PROMPTS[0], 20, sampling=Sampling(
            sample=True, temperature=1.5, top_k=50, top_p=0.95, seed=12))
        gen.submit([other])
        assert out.end.text != alone.end.text
    finally:
        gen.close()


def test_a_cancelled_sequence_leaves_the_batch_and_a_full_queue_refuses(pipes):
    from service.inference.batcher import Overloaded

    pipe = pipes["gpt2"]
    gen = generator(pipe, max_batch=1, max_queue=1)
    try:
        long, out = sequence(pipe, PROMPTS[1], 100)
        gen.submit([long])
        while not out.tokens:
            time.sleep(0.001)
        waiting, waited = sequence(pipe, PROMPTS[3], 3)
        gen.submit([waiting])  # the batch is full (1): it waits
        with pytest.raises(Overloaded):
            gen.submit([sequence(pipe, PROMPTS[0])[0]])
        long.cancel()  # its caller went away: the next one runs
        assert waited.end.tokens <= 3 and len(out.tokens) < 100
        assert gen.running == 0 or waited.done.is_set()
    finally:
        gen.close()


# ---------------------------------------------------------------- through the app


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]
          ) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("generation-app")
    patch = pytest.MonkeyPatch()
    for name in ("CLOZE_DATABASE_URL", "CLOZE_STORAGE_URL", "CLOZE_BROKER_URL",
                 "CLOZE_REQUIRE_API_KEYS"):
        patch.delenv(name, raising=False)
    patch.setenv("CLOZE_HOME", str(home))
    for name, value in LIMITS.items():
        patch.setenv(name, value)
    clear_caches()
    from service.api.app import create_app
    from service.db import get_engine
    from service.domain.tables import Base

    Base.metadata.create_all(get_engine())
    ids = {name: publish(d, "text-generation") for name, d in models.items()}
    with TestClient(create_app(), base_url="http://127.0.0.1:8000",
                    client=("127.0.0.1", 50000)) as client:
        yield {"client": client, **ids}
    get_engine().dispose()
    patch.undo()
    clear_caches()


def generate(world: dict[str, Any], body: dict[str, Any], model: str = "gpt2") -> Any:
    return world["client"].post(f"/v1/models/{world[model]}/generate", json=body)


def stream_events(world: dict[str, Any], body: dict[str, Any]) -> list[dict[str, Any]]:
    with world["client"].stream("POST", f"/v1/models/{world['gpt2']}/generate",
                                json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith(
            "text/event-stream")
        return [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]


def test_generate_answers_the_pipelines_text_with_details(world, pipes):
    prompt = PROMPTS[2]
    theirs = pipes["gpt2"](prompt, max_new_tokens=12, do_sample=False)[0]["generated_text"]
    r = generate(world, {"inputs": prompt, "parameters": {"max_new_tokens": 12}})
    assert r.status_code == 200 and r.json() == [{"generated_text": theirs}]
    r = generate(world, {"inputs": [prompt, PROMPTS[1]], "parameters": {
        "max_new_tokens": 12, "details": True, "return_full_text": False}})
    assert r.status_code == 200
    [[first], [second]] = r.json()
    assert prompt + first["generated_text"] == theirs
    details = first["details"]
    assert details["finish_reason"] in {"length", "eos_token"}
    assert details["generated_tokens"] == len(details["tokens"]) <= 12
    assert all(t["logprob"] <= 0 and set(t) == {"id", "text", "logprob", "special"}
               for t in details["tokens"])
    assert "".join(t["text"] for t in details["tokens"]) == first["generated_text"]


def test_stream_concatenates_to_the_non_streamed_text(world):
    for params in ({"max_new_tokens": 15, "return_full_text": False},
                   {"max_new_tokens": 15, "details": True},
                   {"max_new_tokens": 15, "seed": 3, "temperature": 0.8, "top_k": 20}):
        whole = generate(world, {"inputs": PROMPTS[1], "parameters": params}).json()[0]
        events = stream_events(world, {"inputs": PROMPTS[1], "parameters": params})
        assert all(e["generated_text"] is None for e in events[:-1])
        last = events[-1]
        assert last["generated_text"] == whole["generated_text"]
        prefix = PROMPTS[1] if params.get("return_full_text", True) else ""
        assert prefix + "".join(e["token"]["text"] for e in events) == whole["generated_text"]
        if params.get("details"):
            assert last["details"]["generated_tokens"] == len(events)
            assert last["details"]["finish_reason"] in {"length", "eos_token"}
        else:
            assert last["details"] is None


def test_stop_sequences_end_generation_as_tgi_does(world):
    free = generate(world, {"inputs": PROMPTS[1], "parameters": {
        "max_new_tokens": 20, "return_full_text": False}}).json()[0]["generated_text"]
    stop = free.split()[2]
    for name in ("stop", "stop_sequences"):
        r = generate(world, {"inputs": PROMPTS[1], "parameters": {
            "max_new_tokens": 20, "return_full_text": False, name: [stop], "details": True}})
        answer = r.json()[0]
        text, tokens = answer["generated_text"], answer["details"]["tokens"]
        # Ends with the token that completes the stop sequence, which it keeps (as TGI)
        assert free.startswith(text) and stop in text, (free, text)
        assert text.index(stop) + len(stop) > len(text) - len(tokens[-1]["text"])
        assert answer["details"]["finish_reason"] == "stop_sequence"


@pytest.mark.parametrize(("params", "param", "says"), [
    ({"max_new_tokens": 201}, "parameters.max_new_tokens", "at most 200"),
    ({"max_new_tokens": 130}, "parameters.max_new_tokens", "128 positions"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "parameters.stop", "at most 4"),
    ({"stop": [""]}, "parameters.stop", "1 to"),
    ({"top_k": 1000}, "parameters.top_k", "at most"),
    ({"temperature": -1}, "parameters.temperature", "greater than or equal"),
    ({"top_p": 0}, "parameters.top_p", "greater than"),
    ({"repetition_penalty": 0}, "parameters.repetition_penalty", "greater than"),
    ({"typical_p": 0.5}, "parameters.typical_p", "not supported"),
    ({"best_of": 2}, "parameters.best_of", "not supported"),
])
def test_bounds_are_422s_naming_the_parameter(world, params, param, says):
    r = generate(world, {"inputs": "the fox", "parameters": params})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == param and says in error["message"], error


def test_other_refusals(world):
    # 2000 tokens in flight per model at most: 20 copies of 100 new tokens fit no batch
    r = generate(world, {"inputs": ["the fox"] * 5, "parameters": {"max_new_tokens": 100}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "inputs"  # 5 > queue of 4
    r = generate(world, {"inputs": ["the fox", "paris"], "stream": True})
    assert r.status_code == 422 and r.json()["error"]["param"] == "inputs"


def test_a_full_queue_is_a_503_with_retry_after_while_health_answers(world):
    """4 decoding and 4 waiting at most: the rest are refused at once, not queued."""
    body = {"inputs": "the fox", "parameters": {"max_new_tokens": 100, "do_sample": True,
                                                "seed": 1}}
    health: list[float] = []

    def ping() -> None:
        for _ in range(10):
            started = time.monotonic()
            assert world["client"].get("/health").status_code in (200, 503)
            health.append(time.monotonic() - started)

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda _: generate(world, body, "llama"), range(20)))
        ping()
    statuses = [r.status_code for r in answers]
    assert 503 in statuses and 200 in statuses, statuses
    for r in answers:
        if r.status_code == 503:
            assert r.headers["Retry-After"] == "1"
            assert r.json()["error"]["code"] == "overloaded"
    assert max(health) < 1.0


def test_a_client_that_disconnects_mid_stream_frees_its_place(world):
    from service.inference import pipelines

    body = {"inputs": "paris", "parameters": {"max_new_tokens": 120}, "stream": True}
    with world["client"].stream("POST", f"/v1/models/{world['llama']}/generate",
                                json=body) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        generator = pipelines.loaded(world["llama"], "text-generation").generator
        joined = time.monotonic() + 5  # its first token comes before it joins the batch
        while generator.running == 0 and time.monotonic() < joined:
            time.sleep(0.001)
        assert generator.running == 1
        started = generator.steps
    deadline = time.monotonic() + 10
    while generator.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert generator.running == 0
    steps = generator.steps
    assert steps - started < 100  # it left well before its 120 tokens
    time.sleep(0.2)
    assert generator.steps == steps  # nothing decodes for the client that left
