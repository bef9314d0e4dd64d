"""Inference answers are bounded before the model runs (masks per text, outputs per request,
classify's default top_k), client mistakes that used to be 500s are 4xx (top_k past the
vocabulary, lone surrogates), the model cache is bounded in bytes, and an exhausted
database pool is a fast 503. In-process: the real app on SQLite, tiny models built from a
config (nothing downloaded or trained)."""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests import inference_helpers as helpers
from tests.inference_helpers import clear_caches as _clear_caches
from tests.inference_helpers import publish

# Small limits, so each is reached with a small request.
LIMITS = {"CLOZE_MAX_MASKS_PER_INPUT": "8", "CLOZE_MAX_INFERENCE_OUTPUTS": "400",
          "CLOZE_MAX_TOP_K": "300", "CLOZE_RATE_LIMIT_PER_MINUTE": "0"}


@pytest.fixture(scope="module")
def app_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The service's settings pointed at a fresh home with a SQLite database."""
    home = tmp_path_factory.mktemp("inference")
    patch = pytest.MonkeyPatch()
    for name in ("CLOZE_DATABASE_URL", "CLOZE_STORAGE_URL", "CLOZE_BROKER_URL",
                 "CLOZE_REQUIRE_API_KEYS"):
        patch.delenv(name, raising=False)
    patch.setenv("CLOZE_HOME", str(home))
    for name, value in LIMITS.items():
        patch.setenv(name, value)
    _clear_caches()
    from service.db import get_engine
    from service.domain.tables import Base

    Base.metadata.create_all(get_engine())
    yield home
    get_engine().dispose()
    patch.undo()
    _clear_caches()


@pytest.fixture(scope="module")
def world(app_env: Path) -> Iterator[dict[str, Any]]:
    from service.api.app import create_app

    tmp = app_env / "built"
    ids = {
        "mlm": publish(helpers.bert(tmp / "mlm"), "fill-mask"),
        "small_vocab": publish(helpers.bert(tmp / "small", vocab_size=40), "fill-mask"),
        "classify": publish(helpers.bert(tmp / "cls", "classify", labels=500),
                            "text-classification"),
        "tokens": publish(helpers.bert(tmp / "tok", "tokens", labels=3),
                          "token-classification"),
        "generate": publish(helpers.gpt2(tmp / "gen"), "text-generation"),
    }
    # From this machine to a loopback socket: the keyless default.
    with TestClient(create_app(), base_url="http://127.0.0.1:8000",
                    client=("127.0.0.1", 50000)) as client:
        yield {"client": client, **ids}


def post(world: dict[str, Any], model: str, route: str, body: Any) -> Any:
    client: TestClient = world["client"]
    if isinstance(body, bytes):
        return client.post(f"/v1/models/{world[model]}/{route}", content=body,
                           headers={"content-type": "application/json"})
    return client.post(f"/v1/models/{world[model]}/{route}", json=body)


def refused(r: Any, status: int, code: str, param: str | None, says: str) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error
    assert says in error["message"], error


def test_fill_mask_within_the_bounds_answers(world):
    r = post(world, "mlm", "fill-mask", {"inputs": "the [MASK] fox"})
    assert r.status_code == 200 and len(r.json()) == 5
    # 8 masks x top_k 50 = 400 predictions: exactly the limit
    r = post(world, "mlm", "fill-mask", {"inputs": " ".join(["the [MASK]"] * 8),
                                         "parameters": {"top_k": 50}})
    assert r.status_code == 200 and [len(x) for x in r.json()] == [50] * 8


def test_many_masks_are_refused_before_the_model_runs(world):
    """The probe: 510 masks x top_k 60 in a 3.6 KB request answered 111 MB in 13.5 s."""
    started = time.monotonic()
    r = post(world, "mlm", "fill-mask", {"inputs": " ".join(["[MASK]"] * 510),
                                         "parameters": {"top_k": 60}})
    refused(r, 413, "too_many_masks", "inputs", "at most 8 mask tokens")
    assert time.monotonic() - started < 2


def test_outputs_are_bounded_over_all_inputs(world):
    # 9 inputs x 1 mask x top_k 50 = 450 > 400
    r = post(world, "mlm", "fill-mask", {"inputs": ["the [MASK]"] * 9,
                                         "parameters": {"top_k": 50}})
    refused(r, 413, "too_many_outputs", "parameters.top_k", "450")
    # targets cap what each mask can answer: 9 x min(50, 2) = 18
    r = post(world, "mlm", "fill-mask", {"inputs": ["the [MASK]"] * 9,
                                         "parameters": {"top_k": 50, "targets": ["fox", "dog"]}})
    assert r.status_code == 200 and all(len(x) == 2 for x in r.json())


def test_top_k_past_the_vocabulary_is_a_422(world):
    r = post(world, "small_vocab", "fill-mask", {"inputs": "the [MASK]",
                                                 "parameters": {"top_k": 250}})
    refused(r, 422, "invalid_request", "parameters.top_k", "vocabulary size")


@pytest.mark.parametrize(("model", "route", "body", "param"), [
    ("mlm", "fill-mask", b'{"inputs": "\\ud800 [MASK]"}', "inputs"),
    ("mlm", "fill-mask", b'{"inputs": ["ok [MASK]", "\\udfff [MASK]"]}', "inputs"),
    ("mlm", "fill-mask", b'{"inputs": "the [MASK]", "parameters": {"targets": ["\\ud800"]}}',
     "parameters.targets"),
    ("classify", "classify", b'{"inputs": "\\ud800"}', "inputs"),
    ("tokens", "token-classification", b'{"inputs": "a \\ud800 b"}', "inputs"),
    ("generate", "generate", b'{"inputs": "\\ud800"}', "inputs"),
])
def test_lone_surrogates_are_a_422(world, model, route, body, param):
    refused(post(world, model, route, body), 422, "invalid_request", param, "surrogate")


def test_classify_default_top_k_is_capped(world):
    """A 500-label model answered every label by default; now at most max_top_k (300)."""
    r = post(world, "classify", "classify", {"inputs": "the fox"})
    assert r.status_code == 200 and len(r.json()[0]) == 300, r.text
    r = post(world, "classify", "classify", {"inputs": "the fox", "parameters": {"top_k": 3}})
    assert r.status_code == 200 and len(r.json()[0]) == 3
    # 2 inputs x 300 (the capped default) = 600 > 400 outputs
    r = post(world, "classify", "classify", {"inputs": ["the fox", "a dog"]})
    refused(r, 413, "too_many_outputs", "parameters.top_k", "600")


def test_token_classification_is_bounded_by_tokens(world):
    r = post(world, "tokens", "token-classification", {"inputs": "the fox in paris"})
    assert r.status_code == 200
    r = post(world, "tokens", "token-classification", {
        "inputs": [" ".join(["fox"] * 60)] * 8, "parameters": {"aggregation_strategy": "none"}})
    refused(r, 413, "too_many_outputs", "inputs", "tokens")


def test_generation_is_bounded(world):
    r = post(world, "generate", "generate", {"inputs": "the fox",
                                             "parameters": {"max_new_tokens": 5}})
    assert r.status_code == 200
    r = post(world, "generate", "generate", {"inputs": ["the fox"] * 5,
                                             "parameters": {"max_new_tokens": 100}})
    refused(r, 413, "too_many_outputs", "parameters.max_new_tokens", "500")
    # past the model's 128 positions: a 500 from the position embeddings before
    r = post(world, "generate", "generate", {"inputs": "the fox",
                                             "parameters": {"max_new_tokens": 150}})
    refused(r, 422, "invalid_request", "parameters.max_new_tokens", "128")


def test_cache_drops_least_recently_used_models_past_its_bytes(tmp_path):
    from service.inference.loader import ModelCache, ModelTooLarge

    cache = ModelCache(store=None, cache_dir=tmp_path, capacity=10,  # type: ignore[arg-type]
                       max_bytes=100, size=lambda nbytes: nbytes)
    cache.get("a", lambda: 40)
    cache.get("b", lambda: 40)
    cache.get("a", lambda: 40)  # used again: "b" is now the least recent
    cache.get("c", lambda: 40)  # 120 bytes > 100: "b" goes
    assert cache.loaded() == ["a", "c"] and cache.loaded_bytes == 80
    with pytest.raises(ModelTooLarge):
        cache.get("d", lambda: 101)
    assert cache.loaded() == ["a", "c"]


def test_the_cache_counts_a_models_tokenizer(tmp_path):
    """A tokenizer's memory counts beside the weights: a model whose weights fit the cache
    but whose vocabulary is large is refused before it loads (the audit's tokenizer took
    ~1 GB that the cache did not count)."""
    from service.inference.loader import (
        TOKENIZER_MEMORY_PER_FILE_BYTE,
        ModelCache,
        ModelTooLarge,
        tokenizer_bytes,
    )

    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "tokenizer.json").write_bytes(b"x" * 1000)
    assert tokenizer_bytes(tmp_path) == 1000 * TOKENIZER_MEMORY_PER_FILE_BYTE
    cache = ModelCache(store=None, cache_dir=tmp_path, capacity=10,  # type: ignore[arg-type]
                       max_bytes=5000, size=lambda nbytes: nbytes)
    with pytest.raises(ModelTooLarge) as refused:
        cache.make_room(tmp_path)
    assert refused.value.needed == 1000 + 1000 * TOKENIZER_MEMORY_PER_FILE_BYTE


def test_served_models_stay_within_the_cache_bytes(world, monkeypatch):
    """A budget that holds one tiny BERT: serving another drops the first; a budget below
    one model's weights refuses it with a 422 before loading it."""
    from service.inference import pipelines
    from service.settings import get_settings

    def budget(nbytes: int) -> None:
        monkeypatch.setenv("CLOZE_MODEL_CACHE_BYTES", str(nbytes))
        get_settings.cache_clear()
        pipelines._cache.cache_clear()

    try:
        budget(10**9)
        assert post(world, "mlm", "fill-mask", {"inputs": "the [MASK]"}).status_code == 200
        one = pipelines._cache().loaded_bytes
        budget(one * 3 // 2)
        assert post(world, "mlm", "fill-mask", {"inputs": "the [MASK]"}).status_code == 200
        assert post(world, "tokens", "token-classification",
                    {"inputs": "the fox"}).status_code == 200
        assert pipelines._cache().loaded() == [world["tokens"]]
        assert pipelines._cache().loaded_bytes <= one * 3 // 2
        budget(one // 4)
        r = post(world, "mlm", "fill-mask", {"inputs": "the [MASK]"})
        refused(r, 422, "model_too_large", None, f"at most {one // 4} bytes")
    finally:
        monkeypatch.delenv("CLOZE_MODEL_CACHE_BYTES")
        get_settings.cache_clear()
        pipelines._cache.cache_clear()


def test_an_exhausted_pool_is_a_fast_503(world, tmp_path):
    """Every connection held (a pool of one, taken here): a request needing the database
    gets 503 with Retry-After after the short pool timeout, not a 30 s wait or a 500."""
    from sqlalchemy import text
    from sqlalchemy.orm import sessionmaker

    from service.api.app import create_app
    from service.db import get_session, make_engine
    from service.domain.tables import Base

    engine = make_engine(f"sqlite:///{tmp_path / 'one.db'}", pool_size=1, max_overflow=0,
                         pool_timeout=0.5)
    Base.metadata.create_all(engine)
    sessions = sessionmaker(bind=engine)

    def session():
        with sessions() as s:
            yield s

    app = create_app()
    app.dependency_overrides[get_session] = session
    client = TestClient(app, base_url="http://127.0.0.1:8000", client=("127.0.0.1", 50000))
    with engine.connect() as held:
        held.execute(text("select 1"))
        started = time.monotonic()
        r = client.get("/v1/models")
        took = time.monotonic() - started
    assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
    assert r.json()["error"]["code"] == "service_unavailable" and took < 3, took
    assert client.get("/v1/models").status_code == 200  # the connection is back: served
    engine.dispose()


def test_no_connection_is_held_while_a_model_runs_or_a_download_streams(world, tmp_path,
                                                                        monkeypatch):
    """With a pool of one connection, inference and a download each run with it back in
    the pool (before, the request kept it until its answer was sent)."""
    from sqlalchemy.orm import sessionmaker

    from service.api import models as models_api
    from service.api.app import create_app
    from service.db import get_session, make_engine
    from service.domain.tables import Base, ModelRow
    from service.storage import get_store

    engine = make_engine(f"sqlite:///{tmp_path / 'one.db'}", pool_size=1, max_overflow=0,
                         pool_timeout=0.5)
    Base.metadata.create_all(engine)
    sessions = sessionmaker(bind=engine)
    with sessions() as s:
        s.add(ModelRow(id="m_x", name="x", job_id=None, task="fill-mask", architecture="bert",
                       mask_token="[MASK]", storage_prefix="p", archive_key="k", bytes=3,
                       details={}))
        s.commit()
    seen: list[int] = []

    def session():
        with sessions() as s:
            yield s
            s.commit()

    # The inference routes open their session themselves (one thread trip with the caller).
    monkeypatch.setattr(models_api, "session_scope", contextmanager(session))

    class Store:
        def iter_bytes(self, key: str):
            seen.append(engine.pool.checkedout())
            yield b"abc"

    async def fill_mask(**_: object) -> list[object]:
        seen.append(engine.pool.checkedout())
        return []

    monkeypatch.setattr(models_api, "fill_mask", fill_mask)
    app = create_app()
    app.dependency_overrides.update({get_session: session, get_store: lambda: Store()})
    client = TestClient(app, base_url="http://127.0.0.1:8000", client=("127.0.0.1", 50000))
    assert client.post("/v1/models/m_x/fill-mask", json={"inputs": "a [MASK]"}).json() == []
    assert client.get("/v1/models/m_x/download").content == b"abc"
    assert seen == [0, 0]
    engine.dispose()
    get_store.cache_clear()


def test_long_texts_are_truncated_for_classification_unless_refused(world):
    """Classification cuts a long text as fine-tuning cut its training texts (the export's
    tokenizer holds that length; this model has none, so its 512 positions); with
    `truncation: false` the text is refused instead."""
    long_text = " ".join(["the quick brown fox jumps"] * 200)  # ~1,000 tokens
    r = post(world, "classify", "classify", {"inputs": long_text, "parameters": {"top_k": 2}})
    assert r.status_code == 200, r.text
    assert len(r.json()[0]) == 2
    r = post(world, "classify", "classify",
             {"inputs": long_text, "parameters": {"top_k": 2, "truncation": False}})
    refused(r, 413, "input_too_long", "inputs", "longer than the model's 512 tokens")


def test_a_roberta_text_one_past_its_positions_is_a_413(world, tmp_path):
    """RoBERTa's position table (514) holds pad_token_id + 1 more rows than the texts it
    takes (512): a 513-token text was let through and crashed the model (500)."""
    import torch
    from transformers import AutoTokenizer, RobertaConfig, RobertaForMaskedLM

    helpers.tokenizer(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    torch.manual_seed(0)
    config = RobertaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, vocab_size=len(tok), pad_token_id=1,
                           max_position_embeddings=514)
    RobertaForMaskedLM(config).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    world["roberta"] = publish(tmp_path / "model", "fill-mask")
    # [CLS] + n words + [SEP]: 513 tokens with n = 510 + the mask
    too_long = " ".join(["the"] * 510 + ["[MASK]"])
    r = post(world, "roberta", "fill-mask", {"inputs": too_long})
    refused(r, 413, "input_too_long", "inputs", "longer than the model's 512 tokens")
    r = post(world, "roberta", "fill-mask", {"inputs": " ".join(["the"] * 509 + ["[MASK]"])})
    assert r.status_code == 200, r.text
