"""Serving runs requests for one model together in batches, on a lean path of our own, and its
answers are the transformers pipeline's: fill-mask, classification and token classification
equal the pipeline's on the same export; answers given in a batch equal answers given alone;
targets of several sub-tokens are scored as whole words; long texts are read in windows;
a model loads (and warms up) on request. In-process: the real app on SQLite, tiny models
built from a config."""

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests import inference_helpers as helpers
from tests.inprocess import make_app

# A short wait lets concurrent requests meet in one batch, so the test sees batching happen.
# fp32: answers are compared with the (fp32) pipeline's to 1e-5; "auto" would choose bf16
# on a CPU with native bf16 (test_precision_... covers it).
SETTINGS = {"CLOZE_RATE_LIMIT_PER_MINUTE": "0", "CLOZE_INFERENCE_MAX_WAIT_MS": "150",
            "CLOZE_INFERENCE_MAX_BATCH": "64", "CLOZE_INFERENCE_PRECISION": "fp32"}
SENTENCES = ["the quick brown [MASK] jumps over the lazy dog",
             "a small cat sleeps under an old [MASK] near the river",
             "paris [MASK] and london england",
             "the [MASK] fox jumps over the [MASK] dog in paris france"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("batched")
    patch = pytest.MonkeyPatch()
    with make_app(home, patch, **SETTINGS) as app:
        from service.inference import pipelines

        pipelines._cache.cache_clear()  # a model cache over this home's objects
        built = home / "built"
        dirs = {"mlm": helpers.bert(built / "mlm", init_std=1.0),
                "classify": helpers.bert(built / "cls", "classify", labels=4, init_std=1.0),
                # Fine-tuned on 24-token texts, as an export says: longer ones are windowed.
                "tokens": helpers.bert(built / "tok", "tokens", labels=3, init_std=1.0,
                                       max_length=24)}
        tasks = {"mlm": "fill-mask", "classify": "text-classification",
                 "tokens": "token-classification"}
        ids = {name: helpers.publish(path, tasks[name]) for name, path in dirs.items()}
        with TestClient(app, base_url="http://127.0.0.1:8000",
                        client=("127.0.0.1", 50000)) as client:
            yield {"client": client, "ids": ids, "dirs": dirs}
    patch.undo()
    helpers.clear_caches()


def post(world: dict[str, Any], model: str, route: str, body: Any) -> Any:
    r = world["client"].post(f"/v1/models/{world['ids'][model]}/{route}", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def reference(world: dict[str, Any], model: str, task: str) -> Any:
    from transformers import pipeline

    return pipeline(task, model=str(world["dirs"][model]), device="cpu")


def same(ours: Any, theirs: Any, tol: float = 1e-5) -> None:
    """Equal structure, keys and values; scores within tol."""
    if isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), (ours, theirs)
        for a, b in zip(ours, theirs, strict=True):
            same(a, b, tol)
    elif isinstance(theirs, dict):
        assert set(ours) == set(theirs), (ours, theirs)
        for key in theirs:
            same(ours[key], theirs[key], tol)
    elif isinstance(theirs.item() if hasattr(theirs, "item") else theirs, float):
        assert abs(ours - float(theirs)) <= tol, (ours, theirs)  # numpy's floats too
    else:
        assert ours == (theirs.item() if hasattr(theirs, "item") else theirs), (ours, theirs)


def test_fill_mask_answers_as_the_pipeline_does(world):
    pipe = reference(world, "mlm", "fill-mask")
    for body, kwargs in [
        ({"inputs": SENTENCES[0]}, {}),
        ({"inputs": SENTENCES[3]}, {}),  # two masks: a list of lists
        ({"inputs": SENTENCES[:3], "parameters": {"top_k": 7}}, {"top_k": 7}),
        ({"inputs": SENTENCES[0], "parameters": {"targets": ["fox", "cat", "dog"]}},
         {"targets": ["fox", "cat", "dog"]}),
    ]:
        same(post(world, "mlm", "fill-mask", body), pipe(body["inputs"], **kwargs))


def test_classify_and_tokens_answer_as_the_pipeline_does(world):
    texts = ["the quick brown fox", "a small cat sleeps under an old tree near the river"]
    classify = reference(world, "classify", "text-classification")
    same(post(world, "classify", "classify", {"inputs": texts}),
         [classify(t, top_k=4) for t in texts])
    tokens = reference(world, "tokens", "token-classification")
    body = {"inputs": texts[1], "parameters": {"aggregation_strategy": "none",
                                               "ignore_labels": []}}
    same(post(world, "tokens", "token-classification", body),
         tokens(texts[1], aggregation_strategy="none", ignore_labels=[]))


def _concurrently(calls: list[Any]) -> list[Any]:
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


@pytest.mark.parametrize("model,route,bodies", [
    ("mlm", "fill-mask", [{"inputs": s, "parameters": {"top_k": 3}} for s in SENTENCES * 3]),
    ("classify", "classify", [{"inputs": s.replace("[MASK]", "fox")} for s in SENTENCES * 3]),
    ("tokens", "token-classification",
     [{"inputs": s.replace("[MASK]", "fox") + " and the dog" * (i % 4),
       "parameters": {"ignore_labels": []}} for i, s in enumerate(SENTENCES * 3)]),
])
def test_batched_answers_equal_unbatched(world, model, route, bodies):
    from service.inference import pipelines

    alone = [post(world, model, route, body) for body in bodies]
    served = pipelines.loaded(world["ids"][model])
    assert served is not None and served.batcher is not None
    before = served.batcher.batches
    together = _concurrently([lambda body=body: post(world, model, route, body)
                              for body in bodies])
    # Fewer forward passes than requests: some of them ran together.
    assert served.batcher.batches - before < len(bodies)
    for a, b in zip(together, alone, strict=True):
        same(a, b)


def test_a_target_of_several_sub_tokens_is_scored_as_a_whole_word(world):
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(world["dirs"]["mlm"])
    model = AutoModelForMaskedLM.from_pretrained(world["dirs"]["mlm"]).eval()
    word = next(w for w in helpers.WORDS.split() + ["riverbank", "foxes", "londoner"]
                if len(tok(w, add_special_tokens=False)["input_ids"]) == 2)
    pieces = tok(word, add_special_tokens=False)["input_ids"]
    text = "the quick brown [MASK] jumps"
    answer = post(world, "mlm", "fill-mask",
                  {"inputs": text, "parameters": {"targets": [word, "dog"]}})
    # The chain rule, by hand: P(first piece) x P(second piece | first piece in place).
    ids = tok(text)["input_ids"]
    at = ids.index(tok.mask_token_id)
    ids = ids[:at] + [tok.mask_token_id] * 2 + ids[at + 1:]
    expected = 1.0
    with torch.no_grad():
        for k, piece in enumerate(pieces):
            probs = model(torch.tensor([ids])).logits[0, at + k].softmax(-1)
            expected *= float(probs[piece])
            ids[at + k] = piece
    whole = next(a for a in answer if a["token_str"] == tok.decode(pieces))
    assert abs(whole["score"] - expected) < 1e-6
    assert whole["token"] == pieces[0]
    assert whole["sequence"] == tok.decode(ids, skip_special_tokens=True)
    assert {a["token_str"] for a in answer} == {tok.decode(pieces), "dog"}
    assert answer[0]["score"] >= answer[1]["score"]
    # Only several-sub-token targets: still answered, with the same score.
    alone = post(world, "mlm", "fill-mask", {"inputs": text, "parameters": {"targets": [word]}})
    assert len(alone) == 1 and abs(alone[0]["score"] - expected) < 1e-6


def test_long_texts_are_read_in_overlapping_windows(world):
    tokens = reference(world, "tokens", "token-classification")
    text = " ".join([helpers.WORDS] * 3)  # ~75 tokens; the model was fine-tuned on 24
    body = {"inputs": text, "parameters": {"ignore_labels": []}}
    answer = post(world, "tokens", "token-classification", body)
    same(answer, tokens(text, stride=6, ignore_labels=[], aggregation_strategy="simple"))
    # Past the first window: what a pipeline without stride (the text cut to 24 tokens) sees.
    cut = tokens(text, ignore_labels=[], aggregation_strategy="simple")
    assert max(e["end"] for e in answer) > max(e["end"] for e in cut) + 100
    refused = world["client"].post(
        f"/v1/models/{world['ids']['tokens']}/token-classification",
        json={"inputs": text, "parameters": {"aggregation_strategy": "none"}})
    assert refused.status_code == 413 and "window" in refused.json()["error"]["message"]


def test_a_model_loads_and_warms_up_on_request(world):
    from service.inference import pipelines

    pipelines._cache().evict(world["ids"]["classify"])
    client: TestClient = world["client"]
    first = client.post(f"/v1/models/{world['ids']['classify']}/load")
    assert first.status_code == 200, first.text
    assert first.json()["task"] == "text-classification" and first.json()["load_seconds"] > 0
    assert pipelines.loaded(world["ids"]["classify"]) is not None
    again = client.post(f"/v1/models/{world['ids']['classify']}/load").json()
    assert again["load_seconds"] == 0 and again["precision"] == "float32"
    missing = client.post("/v1/models/no-such-model/load")
    assert missing.status_code == 404


@pytest.mark.parametrize("model,route,body", [
    ("mlm", "fill-mask", {"inputs": SENTENCES}),
    ("classify", "classify", {"inputs": SENTENCES}),
    ("tokens", "token-classification", {"inputs": SENTENCES[1] + " " + SENTENCES[3]})])
def test_the_traced_graph_answers_as_the_eager_pass(world, monkeypatch, model, route, body):
    """Every task's pass is served traced (the answers above come from it); eager, as
    CLOZE_INFERENCE_GRAPH=eager asks, answers the same."""
    from service.inference import pipelines
    from service.settings import get_settings

    client: TestClient = world["client"]
    url = f"/v1/models/{world['ids'][model]}"
    pipelines._cache().evict(world["ids"][model])
    assert client.post(f"{url}/load").json()["graph"] == "traced"
    traced = post(world, model, route, body)
    monkeypatch.setattr(get_settings(), "inference_graph", "eager")
    pipelines._cache().evict(world["ids"][model])
    assert client.post(f"{url}/load").json()["graph"] == "eager"
    same(post(world, model, route, body), traced)
    monkeypatch.undo()
    pipelines._cache().evict(world["ids"][model])


def test_a_graph_that_answers_differently_is_not_served():
    """Tracing keeps one path of Python control flow: a module whose answer depends on a
    branch the trace did not take fails the check, and the eager pass is kept."""
    import torch

    from service.inference import graph

    class Branchy(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            x = input_ids.float()
            return x * 2 if int(attention_mask.sum()) == attention_mask.numel() else x

    module = Branchy()

    def eager(batch):
        return module(**batch)

    def batch(mask):
        return {"input_ids": torch.ones(1, 3, dtype=torch.long),
                "attention_mask": torch.tensor([mask])}

    padded, full = batch([1, 1, 0]), batch([1, 1, 1])
    assert graph.trace(module, eager, padded, [padded], 1e-4) is not None
    assert graph.trace(module, eager, padded, [padded, full], 1e-4) is None


def test_a_full_queue_refuses_at_once_and_a_dropped_model_stops_its_thread():
    from service.inference.batcher import Batcher, Overloaded

    release = threading.Event()
    batcher = Batcher(lambda items: [release.wait() and item for item in items],
                      max_batch=2, max_wait_s=0, max_queue=3, name="test")
    running = batcher.submit(["a"])
    time.sleep(0.2)  # "a" is in the model now; 3 more may wait
    waiting = batcher.submit(["b", "c", "d"])
    with pytest.raises(Overloaded):
        batcher.submit(["e"])
    release.set()
    assert [f.result(5) for f in running + waiting] == ["a", "b", "c", "d"]
    assert batcher.batches == 3  # a; b and c together; d
    batcher.close()
    batcher._thread.join(5)
    assert not batcher._thread.is_alive()


def test_lengths_are_grouped_so_padding_stays_under_half():
    from service.inference.served import length_groups

    groups = length_groups([12, 500, 11, 13, 480, 12])
    assert sorted(map(sorted, groups)) == [[0, 2, 3, 5], [1, 4]]
    for group in length_groups([3, 90, 7, 64, 8, 200, 5, 5, 120]):
        lengths = [[3, 90, 7, 64, 8, 200, 5, 5, 120][i] for i in group]
        assert max(lengths) * len(lengths) <= 2 * sum(lengths)


def test_overload_is_a_503_with_retry_after(world, monkeypatch):
    import asyncio

    from service.domain.refusals import Unavailable
    from service.http_errors import domain_status
    from service.inference import pipelines
    from service.inference.batcher import Overloaded

    assert world["client"].post(f"/v1/models/{world['ids']['mlm']}/load").status_code == 200
    served = pipelines.loaded(world["ids"]["mlm"])
    assert served is not None and served.batcher is not None

    def full(items: Path) -> None:
        raise Overloaded("512 sequences are waiting for this model")

    monkeypatch.setattr(served.batcher, "submit", full)
    # The serving layer says so in its own terms; service/http_errors.py makes it a 503.
    with pytest.raises(Unavailable) as refused:
        asyncio.run(pipelines.infer(served, []))
    assert domain_status(refused.value) == 503 and refused.value.retry_after_s == 1
    r = world["client"].post(f"/v1/models/{world['ids']['mlm']}/fill-mask",
                             json={"inputs": "a [MASK] b"})
    assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
    assert r.json()["error"] == {
        "code": "overloaded", "param": None,
        "message": "this model is busy (512 sequences are waiting for this model); retry "
                   "shortly"}


def test_a_request_larger_than_the_queue_is_a_413_not_a_retry(world, monkeypatch):
    from service.inference import pipelines

    assert world["client"].post(f"/v1/models/{world['ids']['tokens']}/load").status_code == 200
    served = pipelines.loaded(world["ids"]["tokens"])
    assert served is not None and served.batcher is not None
    monkeypatch.setattr(served.batcher, "max_queue", 3)
    r = world["client"].post(f"/v1/models/{world['ids']['tokens']}/token-classification",
                             json={"inputs": " ".join([helpers.WORDS] * 3)})  # 4 windows
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_sequences"


def test_precision_auto_is_bf16_only_where_native_and_bf16_when_asked_for(world, monkeypatch):
    """auto: fp32 on a CPU without native bf16 (emulated bf16 is slower), else bf16 unless
    it changes the warm-up top-5. Asked for, bf16 serves, with the same best prediction on
    a peaked model."""
    import torch

    from service.inference import pipelines, served
    from service.settings import get_settings

    client: TestClient = world["client"]
    url = f"/v1/models/{world['ids']['mlm']}"
    body = {"inputs": SENTENCES[0], "parameters": {"top_k": 1}}
    pipelines._cache().evict(world["ids"]["mlm"])
    assert client.post(f"{url}/load").json()["precision"] == "float32"  # as configured
    fp32 = client.post(f"{url}/fill-mask", json=body).json()
    monkeypatch.setattr(get_settings(), "inference_precision", "auto")
    pipelines._cache().evict(world["ids"]["mlm"])
    auto = client.post(f"{url}/load").json()["precision"]
    if not served.native_bf16(torch.device("cpu")):
        assert auto == "float32"
    else:
        assert auto in ("bfloat16", "float32")  # fp32 when bf16 changed the top-5
    monkeypatch.setattr(get_settings(), "inference_precision", "bf16")
    pipelines._cache().evict(world["ids"]["mlm"])
    assert client.post(f"{url}/load").json()["precision"] == "bfloat16"
    bf16 = client.post(f"{url}/fill-mask", json=body).json()
    assert bf16[0]["token"] == fp32[0]["token"]
    monkeypatch.undo()
    pipelines._cache().evict(world["ids"]["mlm"])
