"""GET /v1/jobs/{id}/metrics.svg and /tensorboard on the whole app in this process: the SVG
is a standalone image with one polyline point per train and eval point; the TensorBoard
file reads back with TensorBoard's own reader (steps, tags and values as recorded);
another owner's job is 404 on both; the record framing matches known CRC-32C values."""

import math
import struct
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import IN_CI
from tests.inprocess import client, make_app, make_key

SVG = "{http://www.w3.org/2000/svg}"
TRAIN_STEPS = list(range(5, 101, 5))
EVAL_STEPS = list(range(20, 101, 20))


def train_loss(step: int) -> float:
    return 8.0 * math.exp(-step / 40) + 2.0


def eval_loss(step: int) -> float:
    return train_loss(step) + 0.25


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    with make_app(tmp_path, monkeypatch, CLOZE_REQUIRE_API_KEYS="true",
                  CLOZE_RATE_LIMIT_PER_MINUTE="0") as app:
        yield app


def new_job(owner: str, name: str = "curve") -> str:
    from service.db import session_scope
    from service.domain import lifecycle
    from service.domain.ids import new_id

    job_id = new_id("job")
    with session_scope() as s:
        s.add(lifecycle.new_job(id=job_id, owner=owner, type="pretrain", name=name,
                                spec={"name": name}, dataset_id="ds_none", total_steps=100))
    return job_id


def record_run(job_id: str) -> None:
    """Metric points as the worker records them: train fields, then eval fields merged in."""
    from service.storage import get_store
    from workers.db_reporter import DbReporter

    reporter = DbReporter(job_id, get_store())
    for step in TRAIN_STEPS:
        reporter.log({"step": step, "train_loss": train_loss(step),
                      "learning_rate": 1e-3 * step / 100, "grad_norm": 1.5,
                      "tokens_per_second": 1000.0 + step, "tokens_seen": step * 512})
        if step in EVAL_STEPS:
            reporter.eval({"step": step, "eval_loss": eval_loss(step),
                           "perplexity": math.exp(eval_loss(step)), "accuracy": step / 200})


@pytest.fixture
def alice(app: object) -> TestClient:
    return client(app, Authorization=f"Bearer {make_key('alice')}")  # type: ignore[arg-type]


@pytest.fixture
def bob(app: object) -> TestClient:
    return client(app, Authorization=f"Bearer {make_key('bob')}")  # type: ignore[arg-type]


def polyline(root: ET.Element, name: str) -> list[tuple[float, float]]:
    group = root.find(f".//{SVG}g[@id='{name}']")
    assert group is not None, f"no {name} curve"
    line = group.find(f"{SVG}polyline")
    assert line is not None
    points = [tuple(float(v) for v in pair.split(",")) for pair in line.attrib["points"].split()]
    assert int(group.attrib["data-points"]) == len(points)
    return points  # type: ignore[return-value]


def test_svg_draws_the_train_and_eval_curves(alice: TestClient) -> None:
    job_id = new_job("alice", name="curve <&> run")
    record_run(job_id)
    r = alice.get(f"/v1/jobs/{job_id}/metrics.svg")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(r.content)  # a well-formed XML document (the name is escaped)
    assert root.tag == f"{SVG}svg"
    assert "curve <&> run" in root.findtext(f"{SVG}title", "")
    train, evals = polyline(root, "train_loss"), polyline(root, "eval_loss")
    assert len(train) == len(TRAIN_STEPS) and len(evals) == len(EVAL_STEPS)
    # Left to right by step; the loss falls, so the curve rises on screen (y grows down).
    assert [x for x, _ in train] == sorted(x for x, _ in train)
    assert train[-1][1] > train[0][1] + 100
    # Eval loss is above train loss at the same step: drawn higher (smaller y).
    by_x = dict(train)
    assert all(y < by_x[x] for x, y in evals)
    assert len(root.findall(f".//{SVG}g[@id='eval_loss']/{SVG}circle")) == len(EVAL_STEPS)
    # max_points thins the train points and keeps every eval point.
    thin = ET.fromstring(alice.get(f"/v1/jobs/{job_id}/metrics.svg",
                                   params={"max_points": 5}).content)
    assert len(polyline(thin, "train_loss")) < len(TRAIN_STEPS)
    assert len(polyline(thin, "eval_loss")) == len(EVAL_STEPS)


def test_svg_of_a_job_without_points_says_so(alice: TestClient) -> None:
    r = alice.get(f"/v1/jobs/{new_job('alice')}/metrics.svg")
    assert r.status_code == 200
    root = ET.fromstring(r.content)
    assert root.find(f".//{SVG}polyline") is None
    assert any("no metrics yet" in (t.text or "") for t in root.iter(f"{SVG}text"))


def read_back(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the file, by tag, read by TensorBoard's own event-file loader."""
    if not IN_CI:
        pytest.importorskip("tensorboard", reason="pip install tensorboard to read it back")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]}


def test_tensorboard_file_reads_back_with_tensorboard(alice: TestClient,
                                                       tmp_path: Path) -> None:
    job_id = new_job("alice")
    record_run(job_id)
    r = alice.get(f"/v1/jobs/{job_id}/tensorboard")
    assert r.status_code == 200, r.text
    name = r.headers["content-disposition"].split('filename="')[1].rstrip('"')
    assert "tfevents" in name and job_id in name
    logdir = tmp_path / "runs" / "curve"
    logdir.mkdir(parents=True)
    (logdir / name).write_bytes(r.content)
    scalars = read_back(logdir)
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second",
            "eval/loss", "eval/perplexity", "eval/accuracy"} <= set(scalars)
    assert [s for s, _ in scalars["train/loss"]] == TRAIN_STEPS
    assert [v for _, v in scalars["train/loss"]] == pytest.approx(
        [train_loss(s) for s in TRAIN_STEPS], rel=1e-6)  # float32, as TensorBoard keeps them
    assert [s for s, _ in scalars["eval/loss"]] == EVAL_STEPS
    assert [v for _, v in scalars["eval/loss"]] == pytest.approx(
        [eval_loss(s) for s in EVAL_STEPS], rel=1e-6)
    assert scalars["eval/accuracy"][-1] == (100, pytest.approx(0.5))


def test_event_file_framing() -> None:
    """TFRecord framing by hand: CRC-32C's check value, and a record's layout."""
    from service.plots.tfevents import crc32c, masked_crc32c, record

    assert crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C
    data = b"hello"
    framed = record(data)
    assert struct.unpack("<Q", framed[:8])[0] == 5
    assert struct.unpack("<I", framed[8:12])[0] == masked_crc32c(framed[:8])
    assert framed[12:17] == data
    assert struct.unpack("<I", framed[17:])[0] == masked_crc32c(data)


def test_another_owners_job_is_404(alice: TestClient, bob: TestClient) -> None:
    job_id = new_job("alice")
    record_run(job_id)
    for route in ("metrics.svg", "tensorboard"):
        assert alice.get(f"/v1/jobs/{job_id}/{route}").status_code == 200
        r = bob.get(f"/v1/jobs/{job_id}/{route}")
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found"
        assert bob.get(f"/v1/jobs/job_nope/{route}").status_code == 404
    # No key at all, where keys are required: 401 in the house format.
    r = client(alice.app).get(f"/v1/jobs/{job_id}/metrics.svg")  # type: ignore[arg-type]
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
