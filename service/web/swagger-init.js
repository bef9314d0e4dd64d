// Swagger UI for /docs, started here rather than in an inline script (the page's
// Content-Security-Policy allows scripts from this origin only). Same options as FastAPI's
// own /docs, without the validator badge (an image from another site).
"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#docs",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
