"""Property-based bad input: schemathesis generates requests from the app's OpenAPI schema
(coverage, fuzzing and stateful phases) and checks for server errors and for responses that
do not match the schema. Runs the schemathesis CLI against a live embedded stack."""

import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.stack import Stack


@pytest.fixture(scope="module")
def open_stack(tmp_path_factory) -> Iterator[Stack]:
    env = {k: "" for k in ("CLOZE_DATABASE_URL", "CLOZE_BROKER_URL", "CLOZE_STORAGE_URL")}
    env["CLOZE_RATE_LIMIT_PER_MINUTE"] = "0"  # fuzzing is a flood by design
    env["CLOZE_MAX_UPLOAD_BYTES"] = str(1024 * 1024)
    stack = Stack(tmp_path_factory.mktemp("fuzz"), env, embedded=True)
    yield stack
    stack.stop()


def test_schemathesis_finds_no_server_errors_or_schema_violations(open_stack, tmp_path):
    cli = [sys.executable, "-m", "schemathesis.cli"]
    result = subprocess.run(
        [*cli, "run", f"{open_stack.url}/openapi.json",
         "--checks", "not_a_server_error,response_schema_conformance",
         "--max-examples", "30", "--seed", "1", "--request-timeout", "60"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = result.stdout + result.stderr
    summary = re.search(r"(\d+) generated, (\d+) passed", out)
    assert result.returncode == 0 and summary, out[-4000:]
    generated, passed = map(int, summary.groups())
    print(f"\nschemathesis: {generated} generated requests, {passed} passed")
    assert generated == passed and generated > 500
    assert " 500 " not in open_stack.logs()
