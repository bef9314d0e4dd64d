"""Model imports as an attacker sends them: a config that lies about its weights, an index
that points into another owner's files, compression bombs, damaged archives, archives of
too many members. Each is refused with a clear 4xx and leaves nothing stored; real models
still import. In-process (SQLite, local objects)."""

import io
import json
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from tests.limits_api import (
    Api,
    assert_error,
    make_api,
    safetensors_bytes,
    tar_dir,
    tar_gz,
)

TOKENIZER = {"tokenizer_config.json": json.dumps({"mask_token": "[MASK]"}).encode()}
BERT = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
        "vocab_size": 200}


@pytest.fixture
def api(tmp_path: Path):
    yield from make_api(tmp_path)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from tests.test_import_and_serving import tokenizer_dir as make

    return make.__wrapped__(tmp_path_factory)  # type: ignore[attr-defined]


def bert_dir(tmp: Path, tokenizer_dir: Path, **config: object) -> Path:
    """A real (tiny) BERT fill-mask model directory, as save_pretrained writes it."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    shape = {**BERT, "vocab_size": len(tokenizer), **config}
    shape.pop("model_type"), shape.pop("architectures")
    out = tmp / "bert"
    BertForMaskedLM(BertConfig(**shape)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def model_files(config: dict, weights: bytes, **extra: bytes) -> dict[str, bytes]:
    files = {"m/config.json": json.dumps(config).encode(), **{f"m/{k}": v for k, v in
                                                              TOKENIZER.items()}}
    if weights:
        files["m/model.safetensors"] = weights
    files.update({f"m/{k}": v for k, v in extra.items()})
    return files


def test_real_models_still_import(api: Api, tokenizer_dir: Path, tmp_path: Path):
    from tests.test_import_and_serving import hf_model

    r = api.import_(tar_dir(bert_dir(tmp_path, tokenizer_dir)))
    assert r.status_code == 201 and r.json()["task"] == "fill-mask", r.text
    for head, task in (("classify", "text-classification"),
                       ("tokens", "token-classification"), ("generate", "text-generation")):
        r = api.import_(tar_dir(hf_model(tmp_path, tokenizer_dir, head)))
        assert r.status_code == 201 and r.json()["task"] == task, r.text


def test_a_config_larger_than_its_weights_is_refused(api: Api, tokenizer_dir: Path,
                                                     tmp_path: Path):
    """The probe: a 1 KB archive whose config.json says vocab_size 2,000,000 beside a dummy
    safetensors file imported with 201, and its first fill-mask took the API from 611 to
    1,613 MB. Now the config is checked against the weights' headers at import."""
    dummy = safetensors_bytes({"x": ("F32", [1], b"\0" * 4)})
    huge = {**BERT, "vocab_size": 2_000_000}
    data = tar_gz(model_files(huge, dummy))
    assert len(data) < 2048
    assert_error(api.import_(data), 422, "word embeddings of shape [2000000, 32]", "file")
    # Real weights, the config edited afterwards: the same answer.
    directory = bert_dir(tmp_path, tokenizer_dir)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "vocab_size": 2_000_000}))
    assert_error(api.import_(tar_dir(directory)), 422, "word embeddings")
    # A wider hidden size: every tensor has another shape than the weights.
    (directory / "config.json").write_text(json.dumps({**config, "hidden_size": 64,
                                                       "intermediate_size": 64}))
    assert_error(api.import_(tar_dir(directory)), 422, "shape")
    # Layers the weights lack (and a count that would take minutes even to build).
    (directory / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 10**6}))
    started = time.monotonic()
    assert_error(api.import_(tar_dir(directory)), 422, "num_hidden_layers = 1000000")
    assert time.monotonic() - started < 10
    many = {f"t{i}": ("F32", [0], b"") for i in range(5000)}  # zero-size tensors cost nothing
    many["bert.embeddings.word_embeddings.weight"] = ("F32", [200, 32], b"\0" * 25600)
    lots = {**BERT, "num_hidden_layers": 5000}
    started = time.monotonic()
    assert_error(api.import_(tar_gz(model_files(lots, safetensors_bytes(many)))), 422,
                 "num_hidden_layers = 5000")
    assert time.monotonic() - started < 10
    (directory / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 12}))
    assert_error(api.import_(tar_dir(directory)), 422, "random values")
    assert api.stored() == []


def test_a_header_that_lies_about_its_bytes_is_refused(api: Api):
    """A header may claim a [2000000, 32] tensor; the file must hold its 256 MB."""
    liar = safetensors_bytes({"bert.embeddings.word_embeddings.weight":
                              ("F32", [2_000_000, 32], b"\0" * 128)})
    assert_error(api.import_(tar_gz(model_files(BERT, liar))), 422, "does not fit the bytes")
    assert_error(api.import_(tar_gz(model_files(BERT, b"\xff" * 8 + b"{}"))), 422,
                 "not a safetensors file")


def test_the_parameter_cap(tmp_path: Path, tokenizer_dir: Path):
    for api in make_api(tmp_path, max_import_parameters=10_000):
        directory = bert_dir(tmp_path, tokenizer_dir)
        assert_error(api.import_(tar_dir(directory)), 422, "the limit is 10,000")


def _sharded(tmp: Path, tokenizer_dir: Path, weight_map_target: str) -> bytes:
    """A model whose index sends every tensor to weight_map_target."""
    directory = bert_dir(tmp, tokenizer_dir)
    weights = directory / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        names = list(f.keys())
    weights.rename(directory / "model-00001-of-00001.safetensors")
    index = {"metadata": {}, "weight_map": {name: weight_map_target for name in names}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return tar_dir(directory)


@pytest.mark.parametrize("target", [
    "../../../alice/files/model.safetensors", "../model.safetensors", "/etc/passwd",
    "sub/../../x.safetensors", "..\\x.safetensors"])
def test_index_paths_outside_the_model_folder_are_refused(api: Api, tokenizer_dir: Path,
                                                          tmp_path: Path, target: str):
    """The probe: bob's index pointed at alice's weights with ../../.. and bob's model
    answered with alice's scores."""
    assert_error(api.as_owner("bob").import_(_sharded(tmp_path, tokenizer_dir, target)), 422,
                 "weight_map")
    assert api.stored() == []


def test_a_sharded_model_inside_its_folder_imports(api: Api, tokenizer_dir: Path,
                                                   tmp_path: Path):
    r = api.import_(_sharded(tmp_path, tokenizer_dir, "model-00001-of-00001.safetensors"))
    assert r.status_code == 201, r.text


def test_the_worker_refuses_a_base_model_that_points_outside(tmp_path: Path,
                                                             tokenizer_dir: Path):
    """The worker checks again before loading (a model stored before this check, or
    written by other means): a failed job with the reason, not another owner's weights."""
    from workers.engine.architectures import load_model
    from workers.engine.failures import ConfigError
    from workers.engine.finetune.model import load_base

    with tarfile.open(fileobj=io.BytesIO(_sharded(tmp_path, tokenizer_dir, "../x.safetensors"))
                      ) as tar:
        tar.extractall(tmp_path / "base", filter="data")
    base = tmp_path / "base" / "model"
    with pytest.raises(ConfigError, match="weight_map"):
        load_model(base, "mlm", attention="eager", dropout=None)
    with pytest.raises(ConfigError, match="weight_map"):
        load_base("text_classification", ["a", "b"], str(base), None, dropout=None,
                  attention="eager", seed=0)


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_compression_bombs_stop_as_bytes_are_written(api: Api, tmp_path: Path):
    """The probe: a 1.15 MB zip declaring a 1 GiB member imported (1.1 GB on disk). Here a
    64 MiB member of zeros in a 64 KB zip: refused by the ratio after 8 MiB or so."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m/config.json", json.dumps(BERT))
        with zf.open("m/model.safetensors", "w", force_zip64=True) as f:
            for _ in range(64):
                f.write(b"\0" * (1 << 20))
    started = time.monotonic()
    assert_error(api.import_(buf.getvalue(), "m.zip"), 413, "times its size", "file")
    assert time.monotonic() - started < 10
    bomb = tar_gz({"m/config.json": json.dumps(BERT).encode(),
                   "m/model.safetensors": b"\0" * (64 << 20)})
    assert_error(api.import_(bomb), 413, "times its size")
    # A 400 MB config.json in a 514 KB zip was read on the event loop; now the ratio stops
    # it while it is written, in a worker thread.
    assert_error(api.import_(_zip({"m/config.json": b" " * (64 << 20)}), "m.zip"), 413)
    assert api.stored() == []


def test_extracted_bytes_are_bounded_whatever_the_ratio(tmp_path: Path):
    import os

    for api in make_api(tmp_path, max_extract_bytes=2 << 20):
        noise = os.urandom(3 << 20)  # incompressible: the ratio is ~1
        data = tar_gz(model_files(BERT, noise))
        assert_error(api.import_(data), 413, "extracts to more than 2097152 bytes")


def test_big_json_members_are_bounded(tmp_path: Path):
    for api in make_api(tmp_path, max_compression_ratio=10_000):
        config = b'{"model_type": "bert", "pad": "' + b"x" * (17 << 20) + b'"}'
        assert_error(api.import_(_zip({"m/config.json": config}), "m.zip"), 422,
                     "config.json is larger than")


def test_damaged_archives_are_client_errors(api: Api):
    """The probes: a zip with a bad CRC and a truncated tar.gz were answered 500."""
    good = bytearray(_zip({"m/config.json": json.dumps(BERT).encode()}, zipfile.ZIP_STORED))
    at = good.find(b'"model_type"')
    good[at + 1] ^= 0x20
    assert_error(api.import_(bytes(good), "m.zip"), 422, "Bad CRC", "file")
    whole = tar_gz(model_files(BERT, b"", big=b"x" * 100_000))
    assert_error(api.import_(whole[: len(whole) // 2]), 422, "damaged", "file")
    corrupt = bytearray(whole)
    corrupt[len(corrupt) // 2: len(corrupt) // 2 + 64] = b"\xff" * 64
    r = api.import_(bytes(corrupt))
    assert r.status_code in (415, 422), r.text


def test_many_members_stop_at_the_limit_without_listing(api: Api):
    """The probe: a tar of 150k members was listed whole before the limit applied."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for k in range(150_000):
            tar.addfile(tarfile.TarInfo(f"m/{k}.txt"))
    started = time.monotonic()
    assert_error(api.import_(buf.getvalue(), "m.tar"), 422, "more than 200 members")
    assert time.monotonic() - started < 3
    many = _zip({f"m/{k}.txt": b"" for k in range(5_000)}, zipfile.ZIP_STORED)
    assert_error(api.import_(many, "m.zip"), 422, "more than 200 members")


def test_values_stored_in_bounded_columns_are_checked(api: Api, tokenizer_dir: Path,
                                                     tmp_path: Path):
    """model_type and mask_token go into 32-character columns, id2label into every GET."""
    dummy = safetensors_bytes({"x": ("F32", [1], b"\0" * 4)})
    assert_error(api.import_(tar_gz(model_files({**BERT, "model_type": "b" * 40}, dummy))),
                 422, "model_type")
    many = {str(i): f"label{i}" for i in range(1001)}
    assert_error(api.import_(tar_gz(model_files({**BERT, "id2label": many}, dummy))), 422,
                 "id2label")
    long = {"0": "x" * 101, "1": "y"}
    assert_error(api.import_(tar_gz(model_files({**BERT, "id2label": long}, dummy))), 422,
                 "id2label")
    files = model_files(BERT, dummy)
    files["m/tokenizer_config.json"] = json.dumps({"mask_token": "M" * 40}).encode()
    assert_error(api.import_(tar_gz(files)), 422, "mask_token")


def test_duplicate_members_are_refused(api: Api):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("m/config.json", json.dumps(BERT))
        with pytest.warns(UserWarning):
            zf.writestr("m/config.json", json.dumps({**BERT, "vocab_size": 9}))
    assert_error(api.import_(buf.getvalue(), "m.zip"), 422, "twice")


def _no_event_loop() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False


def test_archive_work_runs_off_the_event_loop(api: Api, monkeypatch: pytest.MonkeyPatch):
    """The probe: a 400 MB config.json was read on the event loop and /health stalled
    3.4 s. Extraction and every check of the directory run in a worker thread."""
    from service.domain import imports

    where: list[bool] = []
    for name in ("extract", "describe"):
        real = getattr(imports, name)

        def spy(*args, _real=real, **kwargs):
            where.append(_no_event_loop())
            return _real(*args, **kwargs)

        monkeypatch.setattr(imports, name, spy)
    dummy = safetensors_bytes({"x": ("F32", [1], b"\0" * 4)})
    assert_error(api.import_(tar_gz(model_files(BERT, dummy))), 422, "word embeddings")
    assert where == [True, True]
