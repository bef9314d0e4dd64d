"""Generation as applications call it (issue 25 item 3), against a real `cloze api` process on
default settings with an imported tiny GPT-2: huggingface_hub's InferenceClient.text_generation
(plain, details, streamed with and without details) and the openai client's
completions.create (plain, streamed with usage, n with a seed, a list of prompts, stop,
logprobs) work unchanged and agree with the server's own greedy text; 16 concurrent clients
are all answered, each with the text it gets alone."""

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import inference_helpers as helpers
from tests.test_generation import gpt2

PROMPT = "paris"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("generation-clients")
    with helpers.api_process(home, {}) as (url, _proc, _env):
        r = httpx.post(f"{url}/v1/models/import", timeout=120,
                       files={"file": ("gpt2.tar.gz", helpers.archive(gpt2(home / "built")))})
        assert r.status_code == 201 and r.json()["task"] == "text-generation", r.text
        model = r.json()["id"]
        yield {"url": url, "model": model, "generate": f"{url}/v1/models/{model}/generate"}


def greedy(served: dict[str, Any], prompt: str = PROMPT, new: int = 12) -> str:
    """The server's own greedy continuation (the prompt left out)."""
    r = httpx.post(served["generate"], timeout=60, json={"inputs": prompt, "parameters": {
        "max_new_tokens": new, "return_full_text": False}})
    assert r.status_code == 200, r.text
    return str(r.json()[0]["generated_text"])


def test_huggingface_hub_text_generation(served: dict[str, Any]) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=served["generate"])
    text = greedy(served)
    assert text  # the model says something
    assert client.text_generation(PROMPT, max_new_tokens=12) == PROMPT + text
    assert client.text_generation(PROMPT, max_new_tokens=12, return_full_text=False) == text
    out = client.text_generation(PROMPT, max_new_tokens=12, details=True)
    assert out.generated_text == PROMPT + text
    assert out.details is not None and out.details.finish_reason in {"length", "eos_token"}
    assert out.details.generated_tokens == len(out.details.tokens)
    assert all(t.logprob <= 0 for t in out.details.tokens)
    pieces = list(client.text_generation(PROMPT, max_new_tokens=12, stream=True))
    assert "".join(pieces) == text
    events = list(client.text_generation(PROMPT, max_new_tokens=12, stream=True,
                                         details=True))
    assert "".join(e.token.text for e in events) == text
    assert events[-1].generated_text == PROMPT + text
    assert events[-1].details is not None and \
        events[-1].details.generated_tokens == len(events)
    assert all(e.generated_text is None for e in events[:-1])
    # a stop sequence ends it, kept in the text (as TGI)
    stop = text.split()[1]
    stopped = client.text_generation(PROMPT, max_new_tokens=12, stop=[stop],
                                     return_full_text=False)
    assert stop in stopped and text.startswith(stopped)


def test_openai_completions(served: dict[str, Any]) -> None:
    from openai import BadRequestError, NotFoundError, OpenAI, UnprocessableEntityError

    client = OpenAI(base_url=f"{served['url']}/v1", api_key="x")
    model = served["model"]
    text = greedy(served)
    done = client.completions.create(model=model, prompt=PROMPT, max_tokens=12,
                                     temperature=0)
    assert done.object == "text_completion" and done.model == model
    assert done.choices[0].text == text and done.choices[0].index == 0
    assert done.choices[0].finish_reason in {"length", "stop"}
    assert done.usage is not None and done.usage.completion_tokens <= 12
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    # streamed: the chunks add up to the same text, then the usage
    chunks = list(client.completions.create(model=model, prompt=PROMPT, max_tokens=12,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in {"length", "stop"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == \
        done.usage.completion_tokens
    # n samples with a seed: repeatable; a list of prompts: one choice each, in order
    a = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, n=3, seed=5)
    b = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, n=3, seed=5)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    other = "the quick brown fox"
    both = client.completions.create(model=model, prompt=[PROMPT, other], max_tokens=12,
                                     temperature=0)
    assert [c.text for c in both.choices] == [text, greedy(served, other)]
    # stop: the text ends before it (OpenAI's rule), streamed or not
    stop = text.split()[1]
    cut = text[:text.index(stop)]
    plain = client.completions.create(model=model, prompt=PROMPT, max_tokens=12,
                                      temperature=0, stop=[stop])
    assert plain.choices[0].text == cut and plain.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=model, prompt=PROMPT, max_tokens=12,
                                         temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == cut
    # logprobs: the tokens, their log-probs and 2 alternatives each
    scored = client.completions.create(model=model, prompt=PROMPT, max_tokens=5,
                                       temperature=0, logprobs=2)
    logprobs = scored.choices[0].logprobs
    assert logprobs is not None and "".join(logprobs.tokens or []) == scored.choices[0].text
    assert all(p <= 0 for p in logprobs.token_logprobs or [])
    assert all(len(top) <= 2 for top in logprobs.top_logprobs or [])
    # an unknown model, a bound: the client's own errors
    with pytest.raises(NotFoundError):
        client.completions.create(model="nope", prompt=PROMPT)
    with pytest.raises((UnprocessableEntityError, BadRequestError)):
        client.completions.create(model=model, prompt=PROMPT, max_tokens=10_000)


async def _clients(served: dict[str, Any], prompts: list[str], rounds: int
                   ) -> list[list[Any]]:
    async with httpx.AsyncClient(timeout=120) as client:
        async def one(prompt: str) -> list[Any]:
            answers = []
            for _ in range(rounds):
                r = await client.post(served["generate"], json={
                    "inputs": prompt, "parameters": {"max_new_tokens": 24,
                                                     "return_full_text": False}})
                answers.append(r.json()[0]["generated_text"] if r.status_code == 200
                               else f"{r.status_code} {r.text[:200]}")
            return answers
        return list(await asyncio.gather(*(one(p) for p in prompts)))


def test_16_concurrent_clients_are_all_answered_with_their_own_text(served: dict[str, Any]
                                                                     ) -> None:
    words = helpers.WORDS.split()
    prompts = [" ".join(words[i:i + 1 + i % 5]) for i in range(16)]
    alone = {p: greedy(served, p, 24) for p in set(prompts)}
    answers = asyncio.run(_clients(served, prompts, 3))
    assert answers == [[alone[p]] * 3 for p in prompts]

