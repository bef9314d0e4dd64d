"""The names a sweep makes stay names (issue 22, finding 10): a sweep named after a base job
with a 255-character name ("-sweep" past the limit) was a 500 on every read of it; a
250-character sweep name was 202 and then failed at once ("-trial-N" past the limit). Both
now run, with the suffix kept and the base cut (jobspec.names.derived)."""

from tests.test_sweeps import api, sweep  # noqa: F401


def test_a_sweep_of_a_base_named_with_255_characters(api):  # noqa: F811
    body = sweep(api.dataset_id)
    body["base"]["name"] = "b" * 255
    r = api.post("/v1/sweeps", json=body)
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["name"] == "b" * 249 + "-sweep" == created["spec"]["name"]
    for path in (f"/v1/sweeps/{created['id']}", "/v1/sweeps",
                 f"/v1/sweeps/{created['id']}/metrics.svg"):
        assert api.get(path).status_code == 200, path
    assert api.post(f"/v1/sweeps/{created['id']}/cancel").json()["status"] == "cancelled"


def test_a_sweep_named_with_250_characters_starts_its_trials(api):  # noqa: F811
    r = api.post("/v1/sweeps", json=sweep(api.dataset_id, name="s" * 250, trials=12,
                                          parallel=2))
    assert r.status_code == 202, r.text
    created = r.json()
    assert (created["status"], created["error"]) == ("running", None), created
    assert [t["status"] for t in created["trials"]] == ["queued", "queued"]
    names = [api.get(f"/v1/jobs/{t['job_id']}").json()["name"] for t in created["trials"]]
    assert names == ["s" * 247 + "-trial-0", "s" * 247 + "-trial-1"]
    # Two-digit trial numbers cut the base one more character.
    from jobspec.names import derived

    assert derived("s" * 250, "-trial-10") == "s" * 246 + "-trial-10"
