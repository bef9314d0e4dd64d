"""The API's documentation pages, /docs (Swagger UI) and /redoc (ReDoc), served from this
package: their scripts come from the fastapi-offline package (Swagger UI 5, ReDoc 2), not
from a CDN by version tag without integrity as FastAPI's own pages load them. These pages
run on the API's own origin, where a script may call every route (with no key at all on
the keyless default), so only our own scripts run on them: no inline script, a
Content-Security-Policy and no framing, as on the dashboard (service/api/web.py).
/openapi.json stays where FastAPI serves it."""

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from service.api.web import WEB
from service.http_errors import ApiError

router = APIRouter(include_in_schema=False)

VENDOR = Path(fastapi_offline.__file__).resolve().parent / "static"
# name -> (file, content type); nothing else is served from here.
ASSETS = {
    "swagger-ui-bundle.js": (VENDOR / "swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    "swagger-ui.css": (VENDOR / "swagger-ui.css", "text/css; charset=utf-8"),
    "redoc.standalone.js": (VENDOR / "redoc.standalone.js", "text/javascript; charset=utf-8"),
    "favicon.png": (VENDOR / "favicon.png", "image/png"),
    "swagger-init.js": (WEB / "swagger-init.js", "text/javascript; charset=utf-8"),
    "redoc-init.js": (WEB / "redoc-init.js", "text/javascript; charset=utf-8"),
}
# The dashboard's policy, plus what the two viewers need: inline style attributes and
# <style> elements that they write (ReDoc's styled-components), data: images and fonts in
# their CSS, and ReDoc's search index in a worker made from a blob.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "font-src 'self' data:; connect-src 'self'; worker-src blob:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Cloze API · {title}</title>
<link rel="icon" href="/docs/assets/favicon.png" type="image/png">
{style}</head>
<body>
<div id="docs"></div>
<script src="/docs/assets/{bundle}"></script>
<script src="/docs/assets/{init}"></script>
</body>
</html>
"""


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    return HTMLResponse(PAGE.format(
        title="Swagger UI", bundle="swagger-ui-bundle.js", init="swagger-init.js",
        style='<link rel="stylesheet" href="/docs/assets/swagger-ui.css">\n'), headers=HEADERS)


@router.get("/redoc")
def redoc() -> HTMLResponse:
    return HTMLResponse(PAGE.format(title="ReDoc", bundle="redoc.standalone.js",
                                    init="redoc-init.js", style=""), headers=HEADERS)


@router.get("/docs/assets/{name}")
def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise ApiError(404, "not_found", f"no documentation file {name[:60]!r}")
    path, media_type = ASSETS[name]
    return FileResponse(path, media_type=media_type, headers=HEADERS)
