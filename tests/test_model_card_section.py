"""A section added to a published model's card (README.md), as an evaluate job adds its
table: in the archive a download serves (its size the API's `bytes`) and in the model's
files; a section with the same heading replaced, not repeated; a card made when the model
had none; a writer that raced another starts again from the other's card. In-process: a
SQLite database and a local object directory."""

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.inprocess import client, make_app, make_key

CARD = """---
tags: [cloze, bert]
---

# tiny

A tiny BERT.

## Evaluation

eval loss 6.2

## How to use

```python
# Evaluation (job_a)
from transformers import pipeline
```
"""


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FastAPI]:
    with make_app(tmp_path, monkeypatch) as app:
        yield app


@pytest.fixture
def alice(app: FastAPI) -> TestClient:
    return client(app, Authorization=f"Bearer {make_key('alice')}")


def publish(tmp_path: Path, card: str | None) -> str:
    from service.db import session_scope
    from service.domain import models
    from service.storage import get_store

    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text('{"model_type": "bert"}')
    (export / "model.safetensors").write_bytes(b"\0" * 4096)
    if card is not None:
        (export / "README.md").write_text(card)
    with session_scope() as s:
        row = models.publish(session=s, store=get_store(), export_dir=export, owner="alice",
                             name="tiny", job_id=None, task="fill-mask", architecture="bert",
                             mask_token="[MASK]", details={})
        return row.id


def append(model_id: str, section: str) -> None:
    from service.db import session_scope
    from service.domain import models
    from service.storage import get_store

    with session_scope() as s:
        models.append_card_section(session=s, store=get_store(), model_id=model_id,
                                   section=section)


def downloaded(alice: TestClient, model_id: str) -> dict[str, bytes]:
    """The download's files by name, after checking its length is the model's `bytes`."""
    r = alice.get(f"/v1/models/{model_id}/download")
    assert r.status_code == 200, r.text
    assert len(r.content) == alice.get(f"/v1/models/{model_id}").json()["bytes"]
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        return {m.name: (tar.extractfile(m) or io.BytesIO()).read()
                for m in tar.getmembers() if m.isfile()}


def section(job: str, score: str) -> str:
    return f"## Evaluation ({job})\n\n| task | model |\n|---|---:|\n| sst2 | {score} |\n"


def test_a_section_is_added_then_replaced_not_repeated(alice: TestClient, tmp_path: Path):
    model_id = publish(tmp_path, CARD)
    before = downloaded(alice, model_id)
    append(model_id, section("job_a", "0.8123"))
    after = downloaded(alice, model_id)
    card = after[f"{model_id}/README.md"].decode()
    assert card == CARD + "\n" + section("job_a", "0.8123")
    # The rest of the archive as it was; the card in the model's files too; one archive.
    assert {k: v for k, v in after.items() if not k.endswith("README.md")} == \
        {k: v for k, v in before.items() if not k.endswith("README.md")}
    files = tmp_path / "objects" / "models" / model_id
    assert (files / "files" / "README.md").read_text() == card
    assert len(list(files.glob("*.tar.gz"))) == 1

    # The same job finishing again (its resumed attempt): the section once, the new one.
    append(model_id, section("job_a", "0.8125"))
    card = downloaded(alice, model_id)[f"{model_id}/README.md"].decode()
    assert card == CARD + "\n" + section("job_a", "0.8125")
    # Once more with the same text: nothing to write, the archive stays.
    archive = next(files.glob("*.tar.gz")).name
    append(model_id, section("job_a", "0.8125"))
    assert next(files.glob("*.tar.gz")).name == archive

    # Another job's section comes after it; replacing the first keeps the second.
    append(model_id, section("job_b", "0.7001"))
    append(model_id, section("job_a", "0.9000"))
    card = downloaded(alice, model_id)[f"{model_id}/README.md"].decode()
    assert card == CARD + "\n" + section("job_a", "0.9000") + "\n" + \
        section("job_b", "0.7001")


def test_a_model_without_a_card_gets_one(alice: TestClient, tmp_path: Path):
    model_id = publish(tmp_path, None)
    append(model_id, section("job_a", "0.5"))
    after = downloaded(alice, model_id)
    assert after[f"{model_id}/README.md"].decode() == section("job_a", "0.5")
    assert f"{model_id}/config.json" in after


def test_a_writer_that_lost_a_race_starts_again_from_the_winners_card(
        alice: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from service.storage import ObjectStore

    model_id = publish(tmp_path, CARD)
    put_file = ObjectStore.put_file
    raced = []

    def racing(self: ObjectStore, local: Path, key: str) -> None:
        if not raced:  # another job's section lands while ours is being uploaded
            raced.append(key)
            append(model_id, section("job_b", "0.7001"))
        put_file(self, local, key)

    monkeypatch.setattr(ObjectStore, "put_file", racing)
    append(model_id, section("job_a", "0.8123"))
    card = downloaded(alice, model_id)[f"{model_id}/README.md"].decode()
    assert card == CARD + "\n" + section("job_b", "0.7001") + "\n" + \
        section("job_a", "0.8123")
    # The loser's archive is gone; one archive remains, the row's.
    assert len(list((tmp_path / "objects" / "models" / model_id).glob("*.tar.gz"))) == 1


def test_a_section_ends_at_the_next_heading_of_its_level():
    from service.domain.models import with_section

    card = "# m\n\n## Evaluation (job_a)\n\nold\n\n### detail\n\nx\n\n## How to use\n\nz\n"
    assert with_section(card, "## Evaluation (job_a)\n\nnew\n") == \
        "# m\n\n## Evaluation (job_a)\n\nnew\n\n## How to use\n\nz\n"
    # A heading inside a code block is code, not the section.
    fenced = "# m\n\n```\n## Evaluation (job_a)\n```\n"
    assert with_section(fenced, "## Evaluation (job_a)\n\nnew") == \
        fenced + "\n## Evaluation (job_a)\n\nnew\n"
    assert with_section("", "## E\n") == "## E\n"
    with pytest.raises(ValueError):
        with_section("# m\n", "no heading")
