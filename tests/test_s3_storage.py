"""The S3 path of object storage, against moto's S3-compatible server on loopback."""

import uuid
from collections.abc import Iterator

import pytest

from service.storage import ObjectStore
from tests.stack import Stack, free_port

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
         "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3(monkeypatch_module) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in CREDS.items():
        monkeypatch_module.setenv(key, value)
    import boto3

    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket="cloze")
    yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_object_store_round_trip(s3, tmp_path):
    store = ObjectStore(f"s3://cloze/{uuid.uuid4().hex}", s3)
    store.check()
    with store.open_write("a/b.bin") as f:
        f.write(b"x" * 3_000_000)
    assert store.exists("a/b.bin") and store.size("a/b.bin") == 3_000_000
    assert b"".join(store.iter_bytes("a/b.bin")) == b"x" * 3_000_000
    src = tmp_path / "dir"
    (src / "sub").mkdir(parents=True)
    (src / "one.json").write_text("{}")
    (src / "sub" / "two.txt").write_text("two")
    assert store.put_dir(src, "d") == 5
    assert store.list("d") == ["one.json", "sub/two.txt"]
    store.get_dir("d", tmp_path / "back")
    assert (tmp_path / "back" / "sub" / "two.txt").read_text() == "two"
    store.delete_prefix("d")
    assert store.list("d") == [] and not store.exists("d/one.json")
    with pytest.raises(ValueError):
        store.open_write("../escape")


@pytest.mark.slow
def test_whole_loop_with_s3_storage(s3, tmp_path, data_dir):
    """Datasets, checkpoints, exports and downloads all live in the S3 bucket."""
    from tests.stack import corpus_slice
    from tests.test_e2e_pretrain import EN_PROBES, pretrain_and_serve

    prefix = uuid.uuid4().hex
    stack = Stack(tmp_path / "home", {**CREDS, "CLOZE_DATABASE_URL": "", "CLOZE_BROKER_URL": "",
                                      "CLOZE_STORAGE_URL": f"s3://cloze/{prefix}",
                                      "CLOZE_S3_ENDPOINT_URL": s3}, embedded=True)
    try:
        corpus = corpus_slice(data_dir / "en-pretrain.txt.gz", 600_000)
        pretrain_and_serve(stack, tmp_path, "en.txt", corpus, EN_PROBES)
    finally:
        stack.stop()
    keys = ObjectStore(f"s3://cloze/{prefix}", s3).list("")
    assert any(k.startswith("datasets/") for k in keys)
    assert any(k.endswith("manifest.json") for k in keys)
    assert any(k.endswith(".tar.gz") for k in keys)
    assert not (tmp_path / "home" / "objects").exists()
