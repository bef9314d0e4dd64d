"""Per-owner storage quotas (CLOZE_STORAGE_QUOTA_BYTES): datasets plus models. Past the
quota an upload or an import is a 413 and nothing is stored; other owners are unaffected;
deleting frees the room. In-process (SQLite, local objects)."""

import json
import os
from pathlib import Path

import pytest

from tests.limits_api import Api, assert_error, make_api, safetensors_bytes, tar_gz

QUOTA = 64 * 1024


@pytest.fixture
def api(tmp_path: Path):
    yield from make_api(tmp_path, storage_quota_bytes=QUOTA)


def _corpus(size: int) -> bytes:
    """Exactly `size` bytes of text."""
    line = b"a line of an ordinary corpus\n"
    body = line * (size // len(line) - 1)
    return body + b"x" * (size - len(body) - 1) + b"\n"


def test_uploads_past_the_quota_are_refused_and_not_stored(api: Api):
    first = api.as_owner("alice").upload("a.txt", _corpus(40 * 1024))
    assert first.status_code == 201, first.text
    before = api.stored()
    r = api.upload("b.txt", _corpus(40 * 1024))
    assert_error(r, 413, "storage quota of 65536 bytes", "file")
    assert r.json()["error"]["code"] == "storage_quota_exceeded"
    assert api.stored() == before
    # Another owner has a quota of their own.
    assert api.as_owner("bob").upload("b.txt", _corpus(40 * 1024)).status_code == 201
    # Deleting frees the room.
    api.as_owner("alice")
    assert api.client.delete(f"/v1/datasets/{first.json()['id']}").status_code == 204
    assert api.upload("b.txt", _corpus(40 * 1024)).status_code == 201


def test_a_full_quota_refuses_before_reading(api: Api):
    for _ in range(2):
        assert api.upload("a.txt", _corpus(32 * 1024)).status_code == 201
    assert_error(api.upload("c.txt", b"x\n"), 413, "storing any more")


def test_imports_count_against_the_quota(api: Api):
    assert api.upload("a.txt", _corpus(40 * 1024)).status_code == 201
    config = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": 32,
              "num_hidden_layers": 0, "num_attention_heads": 2, "intermediate_size": 64,
              "vocab_size": 200, "max_position_embeddings": 16, "type_vocab_size": 1}
    noise = os.urandom(200 * 32 * 4)  # the word embeddings: 25.6 KB, incompressible
    weights = safetensors_bytes({"bert.embeddings.word_embeddings.weight":
                                 ("F32", [200, 32], noise)})
    from tokenizers import Tokenizer, models

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the"])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]")).to_str()
    files = {"m/config.json": json.dumps(config).encode(), "m/model.safetensors": weights,
             "m/tokenizer.json": tokenizer.encode(),
             "m/tokenizer_config.json": b'{"mask_token": "[MASK]"}'}
    before = api.stored()
    assert_error(api.import_(tar_gz(files)), 413, "storage quota")
    assert api.stored() == before
    assert api.as_owner("bob").import_(tar_gz(files)).status_code == 201


def test_zero_turns_quotas_off(tmp_path: Path):
    for api in make_api(tmp_path, storage_quota_bytes=0):
        for _ in range(3):
            assert api.upload("a.txt", _corpus(40 * 1024)).status_code == 201


def test_a_retry_of_the_upload_that_filled_the_quota_replays_it(api: Api):
    data = _corpus(QUOTA)
    key = {"Idempotency-Key": "fill-it"}
    first = api.client.post("/v1/datasets", files={"file": ("a.txt", data)}, headers=key)
    assert first.status_code == 201, first.text
    again = api.client.post("/v1/datasets", files={"file": ("a.txt", data)}, headers=key)
    assert again.status_code == 201 and again.json() == first.json()
    other = api.client.post("/v1/datasets", files={"file": ("b.txt", b"x\n")},
                            headers={"Idempotency-Key": "another"})
    assert_error(other, 413, "storage quota")
    assert len(api.stored()) == 1


def test_a_full_quota_refuses_new_jobs(api: Api):
    """A job would publish a model the owner has no room for: refused before it is queued
    (admission, so that no finished training is ever thrown away)."""
    ds = api.upload("a.txt", _corpus(32 * 1024)).json()
    assert api.upload("b.txt", _corpus(32 * 1024)).status_code == 201
    r = api.client.post("/v1/jobs", json={"dataset_id": ds["id"]})
    assert_error(r, 413, "storage quota of 65536 bytes is used up")
    assert r.json()["error"]["code"] == "storage_quota_exceeded"
    assert api.client.get("/v1/jobs").json()["data"] == []
