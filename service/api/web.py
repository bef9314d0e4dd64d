"""The dashboard: a few static pages (service/web/) that call the API from the browser
with the user's key, as any client does. The pages hold no data and need no key; every
number on them comes from /v1 with the key the user typed, kept in sessionStorage."""

import json
import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from jobspec.metrics import table
from service.http_errors import ApiError

router = APIRouter(include_in_schema=False)

WEB = Path(__file__).resolve().parents[1] / "web"
ASSET = re.compile(r"^[a-z][a-z0-9_-]{0,40}\.(js|css|svg|txt)$")
TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8",
         "svg": "image/svg+xml", "txt": "text/plain; charset=utf-8"}
# Scripts and styles only from this origin, requests only to this API, and no framing
# (a page of another site cannot overlay these buttons: clickjacking).
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data: blob:; connect-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
# page -> (title, script); every page is the same shell with its own script.
PAGES = {"jobs": ("Jobs", "jobs.js"), "job": ("Job", "job.js"),
         "compare": ("Compare runs", "compare.js"), "playground": ("Fill-mask playground",
                                                                   "playground.js"),
         "new": ("New dataset or job", "new.js"), "sweeps": ("Sweeps", "sweeps.js"),
         "sweep": ("Sweep", "sweep.js"), "datasets": ("Datasets", "datasets.js"),
         "dataset": ("Dataset", "dataset.js")}
# The metric table (names, labels, units, colours), embedded in every page as a JSON data
# block (not a script: the CSP runs none inline); common.js reads it as Cloze.METRICS.
# "<" escaped, so no value could close the element.
METRIC_TABLE = json.dumps(table()).replace("<", "\\u003c")


def _page(page: str) -> HTMLResponse:
    title, script = PAGES[page]
    shell = (WEB / "shell.html").read_text(encoding="utf-8")
    html = shell.replace("{{title}}", title).replace("{{page}}", page) \
        .replace("{{script}}", script).replace("{{metrics}}", METRIC_TABLE)
    return HTMLResponse(html, headers=HEADERS)


@router.get("/")
def jobs_page() -> HTMLResponse:
    return _page("jobs")


@router.get("/jobs/{job_id}")
def job_page(job_id: str) -> HTMLResponse:  # the script reads the id from the address
    return _page("job")


@router.get("/compare")
def compare_page() -> HTMLResponse:
    return _page("compare")


@router.get("/playground")
def playground_page() -> HTMLResponse:
    return _page("playground")


@router.get("/new")
def new_page() -> HTMLResponse:
    return _page("new")


@router.get("/sweeps")
def sweeps_page() -> HTMLResponse:
    return _page("sweeps")


@router.get("/sweeps/{sweep_id}")
def sweep_page(sweep_id: str) -> HTMLResponse:  # the script reads the id from the address
    return _page("sweep")


@router.get("/datasets")
def datasets_page() -> HTMLResponse:
    return _page("datasets")


@router.get("/datasets/{dataset_id}")
def dataset_page(dataset_id: str) -> HTMLResponse:  # the script reads the id from the address
    return _page("dataset")


@router.get("/web/{name}")
def asset(name: str) -> Response:
    """A file of service/web by its plain name (no paths: nothing else can be read)."""
    match = ASSET.match(name)
    path = WEB / name
    if match is None or not path.is_file():
        raise ApiError(404, "not_found", f"no dashboard file {name[:60]!r}")
    return Response(path.read_bytes(), media_type=TYPES[match.group(1)], headers=HEADERS)
