// ReDoc for /redoc, started here rather than in an inline script (the page's
// Content-Security-Policy allows scripts from this origin only).
"use strict";
Redoc.init("/openapi.json", {}, document.getElementById("docs"));
