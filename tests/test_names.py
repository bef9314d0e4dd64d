"""Names (issue 22, finding 11): one rule for every name a user gives (jobs, sweeps, datasets,
model imports): no control or invisible characters, a 422 naming the field; names made
from others (a checkpoint's model "-step-N", an import's from its folder) kept within 255
characters and the rule; metrics.svg well-formed XML whatever a stored name holds."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.inprocess import client, make_app
from tests.limits_api import tar_dir
from tests.test_publish_and_delete import _checkpoint, _job, alice, app, tiny  # noqa: F401
from tests.test_sweeps import sweep

PROBE = "ctl\x1b[31m\x00\x08name"  # the audit's: ESC, NUL, backspace
# NUL, ESC, DEL, a C1 control, a right-to-left override, a line separator, a lone surrogate.
REFUSED = [PROBE, "a\x7fb", "a\x85b", "a\u202eb", "a\u2028b", "tab\tname", "a\ud800b"]
# Names in scripts and emoji that need a joiner or non-joiner are names.
ACCEPTED = ["می\u200cخواهم", "family \U0001f468\u200d\U0001f469\u200d\U0001f467", "naïve 名前"]


def _json(body: dict[str, Any]) -> dict[str, Any]:
    # A lone surrogate cannot be encoded as UTF-8: escaped, as a JSON client may send it.
    return {"content": json.dumps(body, ensure_ascii=True),
            "headers": {"content-type": "application/json"}}


@pytest.fixture
def api(tmp_path, monkeypatch):
    with make_app(tmp_path, monkeypatch, CLOZE_RATE_LIMIT_PER_MINUTE="0") as app_:
        c = client(app_)
        r = c.post("/v1/datasets", files={"file": ("t.txt", b"the cat sat on the mat.\n" * 50)})
        assert r.status_code == 201, r.text
        c.dataset_id = r.json()["id"]  # type: ignore[attr-defined]
        yield c


def _refused(r: Any, param: str) -> str:
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    return str(error["message"])


def test_the_name_rule():
    from jobspec import names

    for name in REFUSED:
        why = names.problem(name)
        assert why is not None and "control or invisible" in why, name
    assert names.problem(PROBE) == ("must not hold control or invisible characters (U+001B "
                                    "at position 3)")
    assert all(names.problem(name) is None for name in ACCEPTED)
    assert names.problem("n" * 255) is None and "at most 255" in str(names.problem("n" * 256))


def test_derived_names_keep_the_suffix_within_the_limit_and_the_rule():
    from jobspec.names import MAX_NAME_CHARS, derived, problem

    for base in ("n" * 255, "n" * 250, "short", PROBE * 40, ""):
        for suffix in ("-sweep", "-trial-99", "-step-10000000", ""):
            name = derived(base, suffix)
            assert len(name) <= MAX_NAME_CHARS and name.endswith(suffix), (base, suffix)
            assert problem(name) is None
    assert derived("n" * 255, "-trial-7") == "n" * 247 + "-trial-7"
    assert derived("short", "-sweep") == "short-sweep"
    assert derived(PROBE) == "ctl[31mname"


def test_jobs_and_sweeps_refuse_control_characters_naming_the_field(api):
    job = {"dataset_id": api.dataset_id, "model": {"size": "tiny"},
           "hyperparameters": {"max_steps": 10, "batch_size": 2, "sequence_length": 16}}
    for name in REFUSED:
        says = _refused(api.post("/v1/jobs", **_json({**job, "name": name})), "name")
        # (pydantic refuses a lone surrogate in a string field first, in its own words)
        assert "control or invisible characters" in says or "\ud800" in name, says
        _refused(api.post("/v1/jobs", params={"dry_run": "true"},
                          **_json({**job, "name": name})), "name")
        _refused(api.post("/v1/sweeps", **_json(sweep(api.dataset_id, name=name))), "name")
        body = sweep(api.dataset_id)
        body["base"]["name"] = name
        if "\ud800" in name:  # the base is stored as JSON before it is read as a job spec
            says = _refused(api.post("/v1/sweeps", **_json(body)), "base")
            assert says == "base: base.name holds a lone surrogate, which is no Unicode text"
        else:
            _refused(api.post("/v1/sweeps", **_json(body)), "base.name")
    assert api.get("/v1/jobs").json()["data"] == []
    assert api.get("/v1/sweeps").json()["data"] == []
    for name in ACCEPTED:
        r = api.post("/v1/jobs", json={**job, "name": name})
        assert r.status_code == 202 and r.json()["name"] == name, r.text


def test_dataset_names_and_file_names_keep_the_rule(api):
    for name in REFUSED[:-1]:  # a form field is UTF-8: no lone surrogate to send
        r = api.post("/v1/datasets", data={"name": name},
                     files={"file": ("t.txt", b"some text\n" * 5)})
        assert "control or invisible" in _refused(r, "name")
    # With no name the file's name names the dataset: the rule holds for it too.
    r = api.post("/v1/datasets", files={"file": ("a\x1bb.txt", b"some text\n" * 5)})
    assert "control or invisible" in _refused(r, "file")
    r = api.post("/v1/datasets", data={"name": ACCEPTED[0]},
                 files={"file": ("t.txt", b"some text\n" * 5)})
    assert r.status_code == 201 and r.json()["name"] == ACCEPTED[0]


def test_model_import_names_keep_the_rule(api, tiny: Path):  # noqa: F811
    archive = tar_dir(tiny, arcname="my\x1b[31m-encoder\u202e")
    r = api.post("/v1/models/import", data={"name": PROBE},
                 files={"file": ("m.tar.gz", archive)})
    assert "control or invisible" in _refused(r, "name")
    # No name given: the archive's folder names it, less what the rule refuses.
    r = api.post("/v1/models/import", files={"file": ("m.tar.gz", archive)})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "my[31m-encoder"


def test_a_checkpoints_model_keeps_its_step_in_a_255_character_name(
        alice, tiny: Path, tmp_path: Path):  # noqa: F811
    job = _job(name="n" * 255)
    _checkpoint(job, 20, tiny, tmp_path)
    r = alice.post(f"/v1/jobs/{job}/checkpoints/20/publish")
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "n" * 247 + "-step-20"


def _well_formed(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # raises on a character XML cannot hold


def test_metrics_svg_is_well_formed_whatever_a_stored_name_holds(api):
    """Rows made before the rule may hold any name: the plots escape what XML cannot hold
    (defence in depth; the rule keeps new names out)."""
    from service.db import session_scope
    from service.domain.tables import JobRow, MetricRow, SweepRow

    r = api.post("/v1/sweeps", json=sweep(api.dataset_id, name="plain"))
    assert r.status_code == 202, r.text
    sweep_id, job_id = r.json()["id"], r.json()["trials"][0]["job_id"]
    with session_scope() as s:
        s.get(SweepRow, sweep_id).name = PROBE + "\ufffe<&>"
        s.get(JobRow, job_id).name = PROBE + "\ufffe<&>"
        s.add(MetricRow(job_id=job_id, step=10, train_loss=2.0, eval_loss=2.5))
    for path in (f"/v1/sweeps/{sweep_id}/metrics.svg", f"/v1/jobs/{job_id}/metrics.svg"):
        r = api.get(path)
        assert r.status_code == 200, r.text
        title = _well_formed(r.text).find("{http://www.w3.org/2000/svg}title")
        assert title is not None and title.text is not None
        assert title.text.startswith("ctl\ufffd[31m\ufffd\ufffdname\ufffd<&>"), title.text


def test_line_chart_text_is_escaped():
    from service.plots.svg import Series, line_chart

    svg = line_chart("a\x00<b>&\x1b", [Series("s\x07\"'", "lab\x0bel<", "#000",
                                              [(1.0, 2.0), (2.0, 1.0)])],
                     y_label="y\x1f&")
    root = _well_formed(svg)
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "a\ufffd<b>&\ufffd" in texts and "y\ufffd&" in texts and "lab\ufffdel<" in texts
