"""/docs: Swagger UI from assets the service serves itself (fastapi-offline ships them).

The page gets its own content security policy: its scripts and styles from this origin,
and its one inline script by hash, so no CDN and no other inline script can run.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
ASSETS_URL = "/docs-assets"
ASSETS = files("fastapi_offline") / "static"
INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def add_docs(api: FastAPI) -> None:
    """Swagger UI at DOCS_URL for the app's OpenAPI schema; no ReDoc (it needs a CDN font)."""
    api.mount(ASSETS_URL, StaticFiles(directory=str(ASSETS)), name="docs-assets")

    @api.get(DOCS_URL, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{api.openapi_url}",
            title=f"{api.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        )
        page.headers["Content-Security-Policy"] = _policy(bytes(page.body))
        return page


def _policy(page: bytes) -> str:
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in INLINE_SCRIPT.findall(page)
    )
    return (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self';"
        " img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"
    )
