"""Names made before the name rule (issue 22, finding 11) are brought within it by migration
0014, in the names columns and in the stored specs read again later: a job paused before
the upgrade resumes (the engine's parse_spec would refuse its name), a sweep made before it
reads (its stored spec is checked on every read), on SQLite and on Postgres."""

from typing import Any

import pytest

BAD = "ctl\x1b[31m\x08name\u202e"


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'names.db'}"
    return str(request.getfixturevalue("fresh_postgres")).replace(
        "postgresql://", "postgresql+psycopg://")


def _upgrade(url: str, revision: str) -> None:
    from alembic import command

    from service.cli import _alembic_config

    cfg = _alembic_config()
    cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(cfg, revision)


def test_names_before_the_rule_are_cleaned(url):
    from sqlalchemy.orm import Session

    from jobspec import parse_spec
    from jobspec.sweep import SweepSpec
    from service.db import make_engine
    from service.domain.tables import DatasetRow, JobRow, ModelRow, SweepRow

    _upgrade(url, "0013")
    engine = make_engine(url)
    long_name = "b" * 255 + "-sweep"  # SQLite kept what a VARCHAR(255) would not
    sweep_spec: dict[str, Any] = {
        "type": "sweep", "name": BAD, "base": {"dataset_id": "ds_1"}, "trials": 2,
        "search_space": {"hyperparameters.learning_rate": {
            "type": "loguniform", "low": 1e-4, "high": 1e-3}}}
    with Session(engine) as s:
        s.add_all([
            DatasetRow(id="ds_1", name=BAD, format="txt", bytes=1, sha256="0", documents=1,
                       storage_key="k"),
            ModelRow(id="m_1", name="\x1b\x07", task="fill-mask", architecture="bert",
                     storage_prefix="p", archive_key="a", bytes=1, details={}),
            JobRow(id="job_1", type="pretrain", name=BAD, status="paused",
                   spec={"type": "pretrain", "name": BAD, "dataset_id": "ds_1"},
                   dataset_id="ds_1"),
            JobRow(id="job_2", type="pretrain", name="fine", status="queued",
                   spec={"type": "pretrain", "name": "fine", "dataset_id": "ds_1"},
                   dataset_id="ds_1"),
            SweepRow(id="swp_1", name=BAD, status="running", spec=sweep_spec,
                     trials_started=0)])
        if url.startswith("sqlite"):
            s.add(SweepRow(id="swp_2", name=long_name, status="running",
                           spec={**sweep_spec, "name": long_name}, trials_started=0))
        s.commit()
    _upgrade(url, "head")
    with Session(engine) as s:
        assert s.get(DatasetRow, "ds_1").name == "ctl[31mname"
        assert s.get(ModelRow, "m_1").name == "m_1"  # nothing left: its id names it
        paused = s.get(JobRow, "job_1")
        assert paused.name == paused.spec["name"] == "ctl[31mname"
        assert parse_spec(paused.spec).name == "ctl[31mname"  # the engine reads it again
        assert s.get(JobRow, "job_2").spec["name"] == "fine"  # untouched
        sweep = s.get(SweepRow, "swp_1")
        assert sweep.name == SweepSpec.model_validate(sweep.spec).name == "ctl[31mname"
        if url.startswith("sqlite"):
            long = s.get(SweepRow, "swp_2")
            assert long.name == long.spec["name"] == "b" * 255
            SweepSpec.model_validate(long.spec)
    engine.dispose()
