"""/docs and /redoc (issue 22, finding 9): FastAPI's pages had no Content-Security-Policy and
no framing headers, ran an inline script, and loaded Swagger UI and ReDoc from a CDN by
version tag without integrity, on the API's own origin (every route callable from there,
with no key on the keyless default). Now they load only this package's files, under a CSP
with no inline script, and may not be framed; and in a real browser (Debian's chromium,
as tests/test_dashboard.py) they still render the API, with nothing blocked and no request
to another origin."""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.inprocess import make_app
from tests.test_dashboard import browser  # noqa: F401 (a fixture)
from tests.test_stream import Served


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    mp = pytest.MonkeyPatch()
    with make_app(tmp_path_factory.mktemp("docs"), mp) as app:
        served = Served(app)
        yield served
        served.stop()
    mp.undo()


def directives(policy: str) -> dict[str, list[str]]:
    return {d.split()[0]: d.split()[1:] for d in policy.split(";") if d.strip()}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_load_only_this_packages_files_under_a_csp_and_no_framing(served, page):
    r = httpx.get(served.url + page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = directives(r.headers["content-security-policy"])
    assert csp["default-src"] == ["'none'"] and csp["script-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"] and csp["connect-src"] == ["'self'"]
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    html = r.text
    assert "http://" not in html and "https://" not in html and "//" not in \
        html.replace("://", "")  # no other origin, not even scheme-relative
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "an inline script"
    assert not re.search(r"\bon[a-z]+=", html), "an inline event handler"
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(urls) >= 3 and all(u.startswith("/docs/assets/") for u in urls), urls
    for url in urls:
        asset = httpx.get(served.url + url)
        assert asset.status_code == 200, url
        assert asset.headers["x-content-type-options"] == "nosniff"
        kind = {"js": "text/javascript", "css": "text/css", "png": "image/png"}[
            url.rsplit(".", 1)[1]]
        assert asset.headers["content-type"].startswith(kind), (url, asset.headers)
    # the viewers are the package's files, byte for byte
    import fastapi_offline

    vendor = Path(fastapi_offline.__file__).parent / "static"
    bundle = "swagger-ui-bundle.js" if page == "/docs" else "redoc.standalone.js"
    assert httpx.get(f"{served.url}/docs/assets/{bundle}").content == \
        (vendor / bundle).read_bytes()


def test_only_the_listed_files_are_served(served):
    for name in ("../app.py", "core.py", "swagger-ui-bundle.js.map", "%2e%2e%2fsettings.py"):
        r = httpx.get(f"{served.url}/docs/assets/{name}")
        assert r.status_code == 404, (name, r.status_code)
    assert httpx.get(f"{served.url}/openapi.json").json()["info"]["title"] == "Cloze"
    assert httpx.get(f"{served.url}/docs/oauth2-redirect").status_code == 404


def open_page(chromium: Any, url: str) -> tuple[Any, list[str], set[str]]:
    context = chromium.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    problems: list[str] = []
    hosts: set[str] = set()  # of the requests that were made (not those the CSP blocked)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text)
            if "Content Security Policy" in m.text or m.type == "error" else None)
    page.on("requestfinished", lambda req: hosts.add(req.url.split("/")[2])
            if req.url.startswith("http") else None)
    page.goto(url)
    return page, problems, hosts


def test_swagger_ui_renders_the_api_in_a_browser(served, browser):  # noqa: F811
    page, problems, hosts = open_page(browser, served.url + "/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    assert page.locator(".opblock").count() >= 20  # one per operation
    assert page.locator(".information-container .title").inner_text().startswith("Cloze")
    page.locator(".opblock-summary").first.click()  # an operation opens
    page.wait_for_selector(".opblock-body", timeout=10_000)
    assert problems == [], problems
    assert hosts == {served.url.split("/")[2]}, hosts
    page.context.close()


def test_redoc_renders_the_api_in_a_browser(served, browser):  # noqa: F811
    page, problems, hosts = open_page(browser, served.url + "/redoc")
    page.wait_for_selector("h1", timeout=30_000)
    page.wait_for_function("document.body.innerText.includes('/v1/jobs')", timeout=30_000)
    assert "Cloze" in page.locator("h1").first.inner_text()
    # ReDoc's menu shows its maker's logo from their site: the policy blocks it (as meant:
    # nothing from another origin), and ReDoc then leaves it out.
    logo = "https://cdn.redoc.ly/redoc/logo-mini.svg"
    assert [p for p in problems if logo not in p] == [], problems
    assert hosts == {served.url.split("/")[2]}, hosts
    page.context.close()
