"""Who may call and from where: on the keyless loopback default a Hugging Face token is
ignored; a rebinding Host name and a cross-site form post are refused; a request from
another machine needs a key however the server was started; `?after=` cursors do not
reveal another owner's ids. In-process (the whole app on SQLite), plus one real uvicorn
started the way the README's users might start it."""

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.inprocess import REMOTE, client, make_app, make_key
from tests.stack import ROOT, free_port


@pytest.fixture
def keyless(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FastAPI]:
    """The embedded default: listening on loopback, no keys."""
    with make_app(tmp_path, monkeypatch) as app:
        yield app


def error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text


def upload(c, name: str = "a.txt", **headers: str) -> httpx.Response:
    return c.post("/v1/datasets", files={"file": (name, b"one document\nanother one\n")},
                  headers=headers)


def test_keyless_default_ignores_a_hugging_face_token(keyless):
    # what huggingface_hub sends for a logged-in user, to any URL
    hf = client(keyless, authorization="Bearer hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789")
    r = hf.get("/v1/jobs")
    assert r.status_code == 200, r.text  # was 401
    assert upload(hf).status_code == 201
    # other schemes are someone else's too
    assert client(keyless, authorization="Basic dXNlcjpwYXNz").get("/v1/jobs").status_code == 200


def test_keyless_default_still_knows_a_valid_cloze_key(keyless):
    alice = make_key("alice")
    as_alice = client(keyless, authorization=f"Bearer {alice}")
    mine = upload(as_alice).json()["id"]
    assert mine in [d["id"] for d in as_alice.get("/v1/datasets").json()["data"]]
    # anonymous is the local owner, who does not see alice's dataset
    assert mine not in [d["id"] for d in client(keyless).get("/v1/datasets").json()["data"]]
    # a Cloze key that is wrong is an error even here: the caller asked to be someone
    r = client(keyless, authorization="Bearer cloze_sk_not_a_real_key").get("/v1/jobs")
    error(r, 401, "unauthorized")


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io",
                                  "192.168.1.10:8000", ""])
def test_rebinding_host_is_refused_without_keys(keyless, host):
    r = client(keyless, host=host).get("/v1/jobs")
    error(r, 400, "invalid_host")  # was 200: DNS rebinding reached the keyless API
    assert r.json()["error"]["param"] == "Host"
    error(upload(client(keyless, host=host)), 400, "invalid_host")


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000",
                                  "localhost."])
def test_loopback_host_names_are_allowed(keyless, host):
    assert client(keyless, host=host).get("/v1/jobs").status_code == 200


def test_allowed_hosts_setting(tmp_path, monkeypatch):
    with make_app(tmp_path, monkeypatch, CLOZE_ALLOWED_HOSTS='["cloze.internal"]',
                  CLOZE_REQUIRE_API_KEYS="true") as app:
        key = make_key("alice")
        ok = client(app, peer=REMOTE, server="http://10.0.0.5:8000", host="cloze.internal:8000",
                    authorization=f"Bearer {key}")
        assert ok.get("/v1/jobs").status_code == 200
        # once set, it is checked on every request, with a key or not
        bad = client(app, peer=REMOTE, server="http://10.0.0.5:8000", host="evil.example",
                     authorization=f"Bearer {key}")
        error(bad.get("/v1/jobs"), 400, "invalid_host")


def test_keyed_api_answers_any_host_by_default(tmp_path, monkeypatch):
    with make_app(tmp_path, monkeypatch, CLOZE_HOST="0.0.0.0") as app:
        key = make_key("alice")
        c = client(app, peer=REMOTE, server="http://10.0.0.5:8000", host="api.example.com",
                   authorization=f"Bearer {key}")
        assert c.get("/v1/jobs").status_code == 200


@pytest.mark.parametrize("origin", ["http://evil.example", "https://evil.example:8000",
                                    "null", "http://127.0.0.1:9999", "http://localhost.evil.io"])
def test_cross_site_post_is_refused(keyless, origin):
    r = upload(client(keyless), origin=origin)  # a <form> on another site, no preflight
    error(r, 403, "forbidden_origin")  # was 201
    assert r.json()["error"]["param"] == "Origin"
    for path in ("/v1/jobs", "/v1/models/import"):
        error(client(keyless, origin=origin).post(path, json={}), 403, "forbidden_origin")
    error(client(keyless, origin=origin).delete("/v1/datasets/ds_x"), 403, "forbidden_origin")
    # reading is CORS's business: the browser hides the answer from the page
    assert client(keyless, origin=origin).get("/v1/jobs").status_code == 200


def test_own_origin_and_listed_origins_may_post(tmp_path, monkeypatch):
    with make_app(tmp_path, monkeypatch,
                  CLOZE_CORS_ORIGINS='["https://app.example.com"]') as app:
        # the API's own pages (Swagger UI at /docs) post with its own origin
        assert upload(client(app), origin="http://127.0.0.1:8000").status_code == 201
        assert upload(client(app, host="localhost:8000"),
                      origin="http://localhost:8000").status_code == 201
        assert upload(client(app), origin="https://app.example.com").status_code == 201
        # curl and SDKs send no Origin at all
        assert upload(client(app)).status_code == 201


def test_request_from_another_machine_needs_a_key(keyless):
    # CLOZE_HOST is left at its loopback default, as with plain `uvicorn --host 0.0.0.0`:
    # what counts is the connection, not the setting.
    remote = client(keyless, peer=REMOTE, server="http://192.0.2.10:8000")
    error(remote.get("/v1/jobs"), 401, "unauthorized")  # was 200
    error(upload(remote), 401, "unauthorized")
    # an HF token is not a key when one is needed
    remote_hf = client(keyless, peer=REMOTE, server="http://192.0.2.10:8000",
                       authorization="Bearer hf_abc")
    error(remote_hf.get("/v1/jobs"), 401, "unauthorized")
    key = make_key("alice")
    assert client(keyless, peer=REMOTE, server="http://192.0.2.10:8000",
                  authorization=f"Bearer {key}").get("/v1/jobs").status_code == 200
    # through a proxy on this machine: forwarded headers mean someone else is calling
    proxied = client(keyless, **{"x-forwarded-for": "198.51.100.4"})
    error(proxied.get("/v1/jobs"), 401, "unauthorized")
    error(client(keyless, forwarded="for=198.51.100.4").get("/v1/jobs"), 401, "unauthorized")


def test_keys_can_still_be_turned_off_explicitly(tmp_path, monkeypatch):
    with make_app(tmp_path, monkeypatch, CLOZE_REQUIRE_API_KEYS="false") as app:
        remote = client(app, peer=REMOTE, server="http://192.0.2.10:8000", host="127.0.0.1")
        assert remote.get("/v1/jobs").status_code == 200


def _non_loopback_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: only picks the outgoing address
            address = str(s.getsockname()[0])
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_plain_uvicorn_on_all_interfaces_requires_keys_from_other_machines(tmp_path):
    """The probe as reported: `uvicorn service.api.app:app --host 0.0.0.0`, no CLOZE_HOST;
    a request to the machine's network address needs a key; one from this machine's
    loopback does not."""
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address")
    env = {"CLOZE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    subprocess.run([sys.executable, "-m", "service.cli", "migrate"], env=env, cwd=ROOT,
                   check=True, capture_output=True)
    port = free_port()
    log = open(tmp_path / "uvicorn.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "service.api.app:app",
                             "--host", "0.0.0.0", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, \
                    (tmp_path / "uvicorn.log").read_text()
                time.sleep(0.5)
        r = httpx.get(f"http://{address}:{port}/v1/jobs", timeout=30)
        error(r, 401, "unauthorized")  # was 200: keys followed CLOZE_HOST only
        assert httpx.get(f"http://127.0.0.1:{port}/v1/jobs", timeout=30).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture
def two_owners(tmp_path, monkeypatch) -> Iterator[tuple[FastAPI, dict[str, str]]]:
    with make_app(tmp_path, monkeypatch, CLOZE_REQUIRE_API_KEYS="true",
                  CLOZE_RATE_LIMIT_PER_MINUTE="0") as app:
        yield app, {who: make_key(who) for who in ("alice", "bob")}


def test_cursor_of_another_owner_behaves_like_a_missing_id(two_owners):
    app, keys = two_owners
    alice = client(app, authorization=f"Bearer {keys['alice']}")
    bob = client(app, authorization=f"Bearer {keys['bob']}")
    bobs = [upload(bob, f"b{i}.txt").json()["id"] for i in range(2)]
    time.sleep(0.01)  # created after bob's: before the fix bob's page after it listed his own
    alices = upload(alice).json()["id"]
    missing = bob.get("/v1/datasets", params={"after": "ds_doesnotexist00000000"}).json()
    leaked = bob.get("/v1/datasets", params={"after": alices}).json()
    assert leaked == missing == {"object": "list", "data": [], "has_more": False}
    # his own cursor still pages through his own
    page = bob.get("/v1/datasets", params={"after": bobs[1]}).json()
    assert [d["id"] for d in page["data"]] == [bobs[0]]
    # jobs share the code path: bob's older job is not revealed by alice's newer one
    spec = {"hyperparameters": {"max_steps": 1, "warmup_steps": 0}}
    bob_job = bob.post("/v1/jobs", json={"dataset_id": bobs[0], **spec})
    assert bob_job.status_code == 202, bob_job.text
    time.sleep(0.01)
    alice_job = alice.post("/v1/jobs", json={"dataset_id": alices, **spec}).json()["id"]
    for path in ("/v1/jobs", "/v1/models"):
        assert bob.get(path, params={"after": alice_job}).json() == \
            bob.get(path, params={"after": "job_doesnotexist0000000"}).json()
    assert bob.get("/v1/jobs", params={"after": alice_job}).json()["data"] == []
