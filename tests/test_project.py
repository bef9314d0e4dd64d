"""Checks on the project's shape: the compose file, the import direction, migrations."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_is_consistent_with_settings():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"api", "worker", "postgres", "redis", "minio"} <= set(services)
    fields = {f"CLOZE_{name.upper()}" for name in Settings.model_fields}
    for name in ("api", "worker", "worker-gpu", "migrate"):
        env = services[name]["environment"]
        unknown = {k for k in env if k.startswith("CLOZE_")} - fields
        assert not unknown, f"{name} sets variables no setting reads: {unknown}"
        # every variable must parse into a valid Settings
        saved = dict(os.environ)
        try:
            os.environ.update({k: str(v) for k, v in env.items()})
            settings = Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        db = urlparse(settings.database_url)
        assert db.hostname in services and db.port == 5432
        pg = services[db.hostname]["environment"]
        assert (db.username, db.password, db.path.lstrip("/")) == (
            pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])
        assert urlparse(settings.broker_url).hostname in services
        assert settings.storage_url.startswith("s3://")
        assert urlparse(settings.s3_endpoint_url).hostname in services
        assert env["AWS_ACCESS_KEY_ID"] == services["minio"]["environment"]["MINIO_ROOT_USER"]
        assert env["AWS_SECRET_ACCESS_KEY"] == \
            services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
        for dep in services[name].get("depends_on", {}):
            assert dep in services
    bucket = settings.storage_url.split("/")[2]
    assert f"local/{bucket}" in " ".join(services["createbucket"]["entrypoint"])
    assert "noeviction" in services["redis"]["command"]
    assert services["worker"]["command"][:2] == ["cloze", "worker"]
    assert services["api"]["command"][:2] == ["cloze", "api"]
    # A killed API or worker comes back (the reaper re-queues the dead worker's job).
    assert services["worker"]["restart"] == services["api"]["restart"] == "unless-stopped"
    assert services["worker-gpu"]["restart"] == "unless-stopped"


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_compose_runs_a_cpu_worker_and_a_gpu_worker_under_the_gpu_profile():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    cpu, gpu = services["worker"], services["worker-gpu"]
    assert _option(cpu["command"], "--device") == "cpu"
    assert "profiles" not in cpu  # `docker compose up` starts it
    assert "deploy" not in cpu
    # Only `docker compose --profile gpu up` starts the GPU worker: a host without a GPU
    # runs the rest as before.
    assert gpu["profiles"] == ["gpu"]
    assert gpu["command"][:2] == ["cloze", "worker"]
    assert _option(gpu["command"], "--device") == "cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1 and devices[0]["driver"] == "nvidia"
    assert devices[0]["capabilities"] == ["gpu"]
    # One job per GPU: the worker uses as many GPUs as compose reserves for it.
    assert int(_option(gpu["command"], "--gpus")) == devices[0]["count"]
    # Its image has a CUDA build of torch (the Dockerfile's TORCH_INDEX).
    assert "cu" in gpu["build"]["args"]["TORCH_INDEX"].rsplit("/", 1)[1]
    assert gpu["environment"] == cpu["environment"]
    assert set(gpu["depends_on"]) == set(cpu["depends_on"])
    # Each worker its own scratch volume, declared.
    volumes = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["volumes"]
    for service in (cpu, gpu):
        for mount in service.get("volumes", []):
            assert mount.split(":")[0] in volumes
    assert gpu["volumes"] != cpu["volumes"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] if a.name.split(".")[0] != "workers" else a.name
                      for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_service_never_imports_workers():
    for path in (ROOT / "service").rglob("*.py"):
        bad = [m for m in _imports(path) if m == "workers" or m.startswith("workers.")]
        assert not bad, f"{path} imports {bad}"


def test_engine_imports_only_training_libraries():
    # peft only for LoRA fine-tuning (imported where it is used).
    # jobspec: the one job schema (pydantic only), shared with the API.
    # pyarrow only to read Parquet datasets (workers/engine/table_rows.py).
    # sklearn and scipy (its sparse matrices) only for an evaluate job's TF-IDF + logistic
    # regression baselines (workers/engine/baselines.py).
    allowed = {"torch", "transformers", "tokenizers", "numpy", "safetensors", "peft", "psutil",
               "jobspec", "pyarrow", "sklearn", "scipy"}
    for path in (ROOT / "workers" / "engine").rglob("*.py"):
        for module in _imports(path):
            top = module.split(".")[0]
            if top == "workers":
                assert module.startswith("workers.engine"), f"{path} imports {module}"
            elif top not in allowed:
                assert top in sys.stdlib_module_names or top == "__future__", \
                    f"{path} imports {module}"


# File names shared on purpose, each pair by one convention (ARCHITECTURE.md, "Names"):
# an entity's routes in service/api/ beside its functions in service/domain/, a job type's
# spec in jobspec/ beside its run in workers/engine/, and the two halves of the `cloze`
# command (the service's, the client's).
SHARED_NAMES = {
    "datasets.py": {"service/api", "service/domain"},
    "jobs.py": {"service/api", "service/domain"},
    "models.py": {"service/api", "service/domain"},
    "sweeps.py": {"service/api", "service/domain"},
    "pretrain.py": {"jobspec", "workers/engine"},
    "cli.py": {"service", "cloze_client"},
}


def test_a_file_name_means_one_thing():
    """Two modules with one name (errors.py x4, tasks.py x2 before issue 23) send a reader
    to the wrong file; a new one needs a name that says what it is, or a convention above."""
    where: dict[str, set[str]] = {}
    for package in ("service", "workers", "jobspec", "cloze_client"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name != "__init__.py":
                where.setdefault(path.name, set()).add(
                    path.parent.relative_to(ROOT).as_posix())
    reused = {name: dirs for name, dirs in where.items()
              if len(dirs) > 1 and SHARED_NAMES.get(name) != dirs}
    assert not reused, f"file names used twice: {reused}"


def test_domain_knows_nothing_of_http():
    """The domain raises its own exceptions (service/domain/refusals.py); service/http_errors.py
    alone turns them into HTTP answers."""
    for path in (ROOT / "service" / "domain").rglob("*.py"):
        for module in _imports(path):
            assert module.split(".")[0] not in {"fastapi", "starlette"} and \
                module != "service.http_errors" and not module.startswith("service.api"), \
                f"{path} imports {module}"
        tree = ast.parse(path.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
            {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert "ApiError" not in names, f"{path} raises an HTTP error"

def test_inference_knows_nothing_of_http():
    """The serving layer (service/inference/) raises domain errors (service/domain/refusals.py:
    a full queue is Unavailable, a long text TooLarge); service/http_errors.py alone decides the
    status and headers a client gets."""
    for path in (ROOT / "service" / "inference").rglob("*.py"):
        for module in _imports(path):
            assert module.split(".")[0] not in {"fastapi", "starlette", "http"} and \
                module != "service.http_errors" and not module.startswith("service.api"), \
                f"{path} imports {module}"
        tree = ast.parse(path.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
            {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        http = names & {"ApiError", "HTTPException", "HTTPStatus", "JSONResponse"}
        assert not http, f"{path} speaks HTTP: {http}"
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword):
                assert node.arg not in {"status", "status_code", "headers"}, \
                    f"{path}:{node.value.lineno} passes an HTTP {node.arg}"
            if isinstance(node, ast.Raise) and node.exc is not None:
                statuses = [c.value for c in ast.walk(node.exc) if isinstance(c, ast.Constant)
                            and type(c.value) is int and 100 <= c.value <= 599]
                assert not statuses, f"{path}:{node.lineno} raises with a status {statuses}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value.lower() != "retry-after", \
                    f"{path}:{node.lineno} sets an HTTP header"


# Module-level state of service/api/ that is the API's own (who may call how often, how a
# body is parsed), each with the reason it is not serving state.
API_STATE = {
    ("auth.py", "_limiters"): "the rate limiter of each key policy (admission, not serving)",
    ("json_body.py", "_limiters"): "one JSON-parsing thread per event loop",
}
MUTATORS = {"append", "extend", "insert", "pop", "popitem", "clear", "update", "setdefault",
            "add", "discard", "remove", "appendleft", "move_to_end"}


def _module_state(source: str) -> dict[str, int]:
    """The module's names that hold state changed after import (a module-level container
    written to, a `global` rebound, an lru_cache'd function), each with a line using it."""
    tree = ast.parse(source)
    names = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            found.update({name: node.lineno for name in node.names})
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.Delete):
            targets = [node.target] if isinstance(node, ast.AugAssign) else node.targets
            found.update({t.value.id: node.lineno for t in targets
                          if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name)
                          and t.value.id in names})
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                isinstance(node.func.value, ast.Name) and node.func.value.id in names and \
                node.func.attr in MUTATORS:
            found[node.func.value.id] = node.lineno
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for decorator in node.decorator_list:
                func = decorator.func if isinstance(decorator, ast.Call) else decorator
                if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                        ) in {"lru_cache", "cache"}:
                    found[node.name] = node.lineno
    return found


def test_api_holds_no_serving_state():
    """Loaded models, their lookups, queues and warm-up live in service/inference/
    (registry.py, pipelines.py): an API module keeps no state across requests beyond the
    API's own, listed in API_STATE."""
    for path in (ROOT / "service" / "api").rglob("*.py"):
        for name, line in _module_state(path.read_text()).items():
            assert (path.name, name) in API_STATE, \
                f"{path}:{line} keeps {name} across requests: serving state belongs in " \
                "service/inference/ (else add it to API_STATE with the reason)"
    # The rule sees the kinds of state the API used to hold (api/models.py's lookup cache).
    assert set(_module_state("_lookups: dict = {}\n_n = 0\n@lru_cache\ndef cache(): ...\n"
                             "def forget(m):\n    global _n\n    _lookups.pop(m)\n")) == \
        {"_lookups", "_n", "cache"}



def test_api_routes_with_json_bodies_parse_large_ones_off_the_event_loop():
    """Every /v1 route with a JSON body is a JsonBodyRoute (service/api/json_body.py): a
    large body parsed on the event loop stalls every other request, /health included."""
    from fastapi.routing import APIRoute

    from service.api.app import create_app
    from service.api.json_body import JsonBodyRoute

    plain = [r.path for r in create_app().routes if isinstance(r, APIRoute)
             and r.path.startswith("/v1") and r.body_field is not None
             and not isinstance(r, JsonBodyRoute)]
    assert not plain, f"routes whose JSON is parsed on the event loop: {plain}"


def test_workers_write_service_tables_only_through_the_domain():
    """What an attempt records (events, curve, progress, checkpoints, what a resume drops)
    is written through service/domain/attempts.py, status moves through lifecycle.py: no
    module under workers/ names a table class or builds its own SQL. (sqlalchemy.exc stays
    allowed: the worker retries writes while the database is down.)"""
    for path in (ROOT / "workers").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for module in modules:
                assert module != "service.domain.tables", \
                    f"{path}:{node.lineno} imports the tables"
                assert module.split(".")[0] != "sqlalchemy" or \
                    module.startswith("sqlalchemy.exc"), \
                    f"{path}:{node.lineno} imports {module}: write through service/domain"


# The loss names and TensorBoard tags jobspec/metrics.py owns; where they may still be
# spelled, and why.
METRIC_SPELLINGS = re.compile(r"train_loss|eval_loss|(?:train|eval)/\w+")
METRIC_SPELLINGS_ALLOWED = {
    "jobspec/metrics.py": "the table itself",
    "cloze_client/cli.py": "the client installs without jobspec; its copy is checked below",
    "cloze_client/watch.py": "the same: the client's own copy of the names",
}


def _metric_spellings(source: str) -> list[int]:
    return [n.lineno for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and METRIC_SPELLINGS.fullmatch(n.value)]


def test_metric_names_have_one_owner():
    """jobspec/metrics.py's table owns the metric names, their tags, labels, units and
    colours: code names the losses by TRAIN_LOSS / EVAL_LOSS and the rest through the table,
    the pages read the table the server embeds in them, and the copies that must exist
    (the database's columns, the API's MetricPoint, the client's names) agree with it."""
    from cloze_client import cli, types, watch
    from jobspec import metrics
    from service.domain.jobs import MetricPoint
    from service.domain.tables import MetricRow

    for top in ("service", "workers", "jobspec", "cloze_client"):
        for path in sorted((ROOT / top).rglob("*.py")):
            name = str(path.relative_to(ROOT))
            if name not in METRIC_SPELLINGS_ALLOWED:
                found = _metric_spellings(path.read_text())
                assert not found, f"{name} spells a metric name or tag on lines {found}: " \
                    "read it from jobspec/metrics.py"
    for path in sorted((ROOT / "service" / "web").glob("*.*")):
        if path.suffix in (".js", ".html"):
            quoted = re.findall(rf"[\"']({METRIC_SPELLINGS.pattern})[\"']", path.read_text())
            assert not quoted, f"{path.name} spells {quoted}: use Cloze.METRICS"
    # The rule sees what the plots module used to spell.
    assert len(_metric_spellings('TAGS = {"train_loss": "train/loss"}\n'
                                 'Series("eval_loss", "eval loss")\n')) == 3

    names = [m.name for m in metrics.METRICS]
    assert len(set(names)) == len(names) == len(metrics.BY_NAME)
    assert len({m.tag for m in metrics.METRICS}) == len(names)
    side = {s: {m.name for m in metrics.METRICS if m.side == s} for s in ("train", "eval")}
    train_keys = metrics.TrainPoint.__required_keys__ | metrics.TrainPoint.__optional_keys__
    eval_keys = metrics.EvalPoint.__required_keys__ | metrics.EvalPoint.__optional_keys__
    assert train_keys - {"step", "total_steps"} == side["train"]
    assert eval_keys - {"step", "probes"} == side["eval"]
    columns = {*metrics.columns("train"), *metrics.columns("eval")}
    assert {c.name for c in MetricRow.__table__.columns} - \
        {"id", "job_id", "step", "extra", "created_at"} == columns
    assert set(MetricPoint.model_fields) - {"step"} == columns
    # The client's copy (it cannot import jobspec).
    assert set(cli.METRIC_COLUMNS) - {"step"} == columns
    assert set(cli.METRIC_HEADERS) <= columns
    assert set(watch.EVAL_METRICS) <= side["eval"]
    assert set(types.MetricPoint.__required_keys__ | types.MetricPoint.__optional_keys__) \
        - {"step"} == columns


JOB_STATUSES = {"queued", "running", "succeeded", "failed", "cancelled", "paused"}


def test_job_statuses_are_spelled_only_in_the_lifecycle_module():
    """Every status and every move between them lives in service/domain/lifecycle.py;
    elsewhere a status is lifecycle.JobStatus, so no move can skip its conditional UPDATE."""
    lifecycle = ROOT / "service" / "domain" / "lifecycle.py"
    for path in [*(ROOT / "service").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]:
        if path == lifecycle:
            continue
        spelled = [n.lineno for n in ast.walk(ast.parse(path.read_text()))
                   if isinstance(n, ast.Constant) and n.value in JOB_STATUSES]
        assert not spelled, f"{path} spells a job status on lines {spelled}"


def _sources(*tops: str) -> list[Path]:
    return [p for top in tops for p in sorted((ROOT / top).rglob("*.py"))]


def _is_sweep_row_write(node: ast.Call) -> bool:
    """SweepRow(status=...), or update(SweepRow)....values(status=...)."""
    if not any(kw.arg == "status" for kw in node.keywords):
        return False
    if isinstance(node.func, ast.Name):
        return node.func.id == "SweepRow"
    return isinstance(node.func, ast.Attribute) and node.func.attr == "values" and any(
        isinstance(n, ast.Name) and n.id == "SweepRow" for n in ast.walk(node.func.value))


def test_sweep_statuses_are_written_only_in_the_lifecycle_module():
    """A sweep is born running and ends once (lifecycle.new_sweep, lifecycle.end_sweep), as
    a job moves only through lifecycle._move: no other module writes SweepRow.status."""
    lifecycle = ROOT / "service" / "domain" / "lifecycle.py"
    for path in _sources("service", "workers"):
        if path == lifecycle:
            continue
        writes = [n.lineno for n in ast.walk(ast.parse(path.read_text()))
                  if isinstance(n, ast.Call) and _is_sweep_row_write(n)]
        assert not writes, f"{path} writes a sweep's status on lines {writes}"
    # The rule sees both ways the sweeps module used to write it.
    old = ast.parse("SweepRow(id=i, status=s)\nsession.execute(update(SweepRow).where("
                    "SweepRow.id == i).values(status=s, finished_at=t))\n")
    assert sum(isinstance(n, ast.Call) and _is_sweep_row_write(n) for n in ast.walk(old)) == 2


# Pipeline tasks and the Auto classes that load them: jobspec/model_facts.py names them
# (FILL_MASK, ..., AUTO_CLASSES) and derives them from a spec (pipeline_task); elsewhere they
# are read from there, so a new objective or task is one edit.
PIPELINE_TASKS = {"fill-mask", "text-generation", "text-classification",
                  "token-classification", "feature-extraction"}
AUTO_CLASS_NAMES = {"AutoModel", "AutoModelForMaskedLM", "AutoModelForCausalLM",
                    "AutoModelForSequenceClassification", "AutoModelForTokenClassification"}
# Where a task's name may still be spelled, and why: the serving layer's routes are named
# after the task they serve (POST /v1/models/{id}/fill-mask: the wire format, the Hugging
# Face Inference API's task names), and each serving module asks for a model of its route's
# task. They say which task they serve; they derive nothing from a spec.
TASK_SPELLERS = {"service/api": "routes named after the task they serve (wire format)",
                 "service/inference": "each serving module loads its route's task"}


def test_pipeline_tasks_are_spelled_only_in_model_facts():
    owner = ROOT / "jobspec" / "model_facts.py"
    for path in _sources("service", "workers", "jobspec"):
        if path == owner:
            continue
        serving = any(path.is_relative_to(ROOT / d) for d in TASK_SPELLERS)
        spelled = [(n.lineno, n.value) for n in ast.walk(ast.parse(path.read_text()))
                   if isinstance(n, ast.Constant) and isinstance(n.value, str)
                   and (n.value in AUTO_CLASS_NAMES or
                        n.value in PIPELINE_TASKS and not serving)]
        assert not spelled, f"{path} spells a pipeline task or Auto class: {spelled} " \
            "(read it from jobspec/model_facts.py)"


# Model facts each defined once (at module level), and the module that owns each.
FACT_OWNERS = {
    "pipeline_task": "jobspec/model_facts.py", "objective_task": "jobspec/model_facts.py",
    "auto_class": "jobspec/model_facts.py", "model_details": "jobspec/model_facts.py",
    "run_fingerprint": "jobspec/model_facts.py", "NOT_IN_FINGERPRINT": "jobspec/model_facts.py",
    "ROBERTA_POSITION_OFFSET": "jobspec/sizing.py",
    "error_param": "jobspec/field_errors.py",
}
# Spec fields only a fingerprint's exclusions name as strings (elsewhere they are spec
# attributes): spelled again, they would be a second list of what a run's identity leaves out.
FINGERPRINT_ONLY = {"log_every", "eval_every", "checkpoint_every"}


def test_model_facts_have_one_owner():
    """Each fact is defined in its owner only; the run-fingerprint exclusions are listed
    once (NOT_IN_FINGERPRINT); a model's `details` are built by model_facts.model_details
    for both the final model (workers/runner.py) and a published checkpoint
    (service/domain/models.py); pydantic error locations are read in jobspec/field_errors.py
    alone (service/api/json_body.py builds FastAPI's error lists: it names no param)."""
    locations = {ROOT / "jobspec" / "field_errors.py", ROOT / "service" / "api" / "json_body.py"}
    for path in _sources("service", "workers", "jobspec"):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text())
        for node in tree.body:
            names = [node.name] if isinstance(node, ast.FunctionDef | ast.ClassDef) else \
                [t.id for t in getattr(node, "targets", [getattr(node, "target", None)])
                 if isinstance(t, ast.Name)]
            for name in names:
                assert FACT_OWNERS.get(name, rel) == rel, \
                    f"{rel}:{node.lineno} defines {name}: {FACT_OWNERS[name]} owns it"
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in FINGERPRINT_ONLY:
                assert rel == "jobspec/model_facts.py", \
                    f"{rel}:{node.lineno} lists {node.value!r}: use model_facts.run_fingerprint"
            if isinstance(node, ast.Constant) and node.value == "loc":
                assert path in locations, f"{rel}:{node.lineno} reads a pydantic error's " \
                    "location: use jobspec.field_errors.error_param"
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                assert not {"base_model_id", "steps"} <= keys, \
                    f"{rel}:{node.lineno} builds a model's details: use model_details"
    for rel in ("workers/runner.py", "service/domain/models.py"):
        assert "model_details(" in (ROOT / rel).read_text(), f"{rel} builds its own details"


# Data formats are jobspec/formats.py's (the upload check and the engine's readers read them
# there): a name it defines is defined in no other module (no second FORMATS, SPLITS,
# split_columns, record reader), and these values are spelled nowhere else: the dataset kinds
# (but "text": also the records' field and an everyday word, it cannot be told apart), the
# split aliases ("validation", the records' word for valid) and the entity tag positions
# ("B-", "I-", ...), alone or as a regex's character class.
def _format_spellings(source: str, owned: set[str]) -> list[tuple[int, str]]:
    from jobspec import formats

    values = ({k for k in formats.DATASET_KINDS if k != formats.TEXT}
              | {alias for alias, split in formats.SPLITS.items() if alias != split}
              | {f"{position}-" for position in formats.TAG_POSITIONS})
    tag_class = re.compile(rf"\[[{''.join(formats.TAG_POSITIONS)}]{{2,}}\]")
    tree = ast.parse(source)
    found = []
    for node in tree.body:
        names = [node.name] if isinstance(node, ast.FunctionDef | ast.ClassDef) else \
            [t.id for t in getattr(node, "targets", [getattr(node, "target", None)])
             if isinstance(t, ast.Name)]
        found += [(node.lineno, f"defines {name}") for name in names if name in owned]
    found += [(n.lineno, f"spells {n.value!r}") for n in ast.walk(tree)
              if isinstance(n, ast.Constant) and isinstance(n.value, str)
              and (n.value in values or tag_class.search(n.value))]
    return found


def test_data_formats_have_one_owner():
    owner = ROOT / "jobspec" / "formats.py"
    owned = {name for node in ast.parse(owner.read_text()).body
             for name in ([node.name] if isinstance(node, ast.FunctionDef | ast.ClassDef) else
                          [t.id for t in getattr(node, "targets", [getattr(node, "target", None)])
                           if isinstance(t, ast.Name)])
             if not name.startswith("_")}
    assert {"FORMATS", "SPLITS", "split_columns", "ENTITY_TAG", "FormatError"} <= owned
    for top in ("service", "workers", "jobspec", "cloze_client"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path != owner:
                found = _format_spellings(path.read_text(), owned)
                assert not found, f"{path.relative_to(ROOT)}: {found} (jobspec/formats.py " \
                    "owns data formats: read it from there)"
    # The rule sees what the three modules used to spell.
    old = ('FORMATS = {".txt": "txt"}\nSPLITS = {"validation": "valid"}\n'
           'BIO_TAG = re.compile(r"O|[BIESLU]-\\S+")\n'
           'def split_columns(line): ...\n'
           'def is_bio(tags): return all(t[:2] in ("B-", "I-") for t in tags)\n'
           'kind = "tagged_tokens" if tokens else "labelled_text"\n')
    assert len(_format_spellings(old, owned)) == 9


def _migrate(url: str, home: Path) -> None:
    env = {**os.environ, "CLOZE_DATABASE_URL": url, "CLOZE_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "service.cli", "migrate"], env=env, check=True,
                   cwd=ROOT, capture_output=True)


def _schema_diff(url: str) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from service.db import make_engine
    from service.domain.tables import Base

    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    return diff


def test_migrations_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    _migrate(url, tmp_path)
    _migrate(url, tmp_path)  # running it again is harmless
    assert _schema_diff(url) == []


def test_migrations_on_postgres(postgres_url, tmp_path):
    url = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    _migrate(url, tmp_path)
    assert _schema_diff(url) == []


@pytest.mark.parametrize("script", ["scripts/install", "scripts/serve", "scripts/test", ".ci/run"])
def test_scripts_are_valid_bash(script):
    subprocess.run(["bash", "-n", str(ROOT / script)], check=True)


def test_jobspec_needs_only_pydantic():
    """The API process reads the one job schema without torch or the engine."""
    for path in (ROOT / "jobspec").rglob("*.py"):
        for module in _imports(path):
            top = module.split(".")[0]
            assert top in {"pydantic", "pydantic_core", "jobspec", "__future__"} or \
                top in sys.stdlib_module_names, f"{path} imports {module}"


def test_every_test_file_is_in_the_tests_index():
    """tests/README.md says which file tests what; a file missing there is one a newcomer
    cannot find (and a row for a removed file sends them nowhere)."""
    index = (ROOT / "tests" / "README.md").read_text()
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", index, re.M))
    files = {p.relative_to(ROOT / "tests").as_posix()
             for p in (ROOT / "tests").rglob("test_*.py")}
    assert files - listed == set(), "add these to tests/README.md's index"
    assert listed - files == set(), "tests/README.md lists files that are gone"
