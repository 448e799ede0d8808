"""``/docs`` (Swagger UI) and ``/redoc`` from assets installed with the package, never a CDN.

FastAPI's default pages load their JavaScript, CSS, favicon (and ReDoc its fonts) from the
internet, so in an air-gapped deployment they render blank. The ``fastapi-offline`` package
ships the same assets; they are served here under ``/static/docs/`` and the pages point only
there. Swagger UI's online validator badge is off too (it would call validator.swagger.io).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PREFIX = "/static/docs"


def assets_dir() -> Path:
    """The installed ``fastapi_offline/static`` folder (swagger-ui-bundle.js, swagger-ui.css,
    redoc.standalone.js, favicon.png)."""
    return Path(str(files("fastapi_offline") / "static"))


def install_docs(app: FastAPI, openapi_url: str = "/openapi.json") -> None:
    """Serve the assets and the two documentation pages (the app is built with docs_url=None)."""
    app.mount(ASSETS_PREFIX, StaticFiles(directory=assets_dir()), name="docs-assets")
    title = app.title

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=openapi_url, title=f"{title} — API",
                                   swagger_js_url=f"{ASSETS_PREFIX}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS_PREFIX}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS_PREFIX}/favicon.png",
                                   swagger_ui_parameters={"validatorUrl": None})

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=openapi_url, title=f"{title} — API reference",
                              redoc_js_url=f"{ASSETS_PREFIX}/redoc.standalone.js",
                              redoc_favicon_url=f"{ASSETS_PREFIX}/favicon.png", with_google_fonts=False)
