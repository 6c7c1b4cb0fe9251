"""Swagger UI at /docs, offline, fed an OpenAPI 3.0 copy of FastAPI's 3.1 schema.

The only Swagger UI we can ship without a CDN (swagger-ui-bundle 1.1.0 = Swagger UI 4.15) reads
OpenAPI 3.0 and refuses 3.1 ("does not specify a valid version field"). /openapi.json stays the
3.1 schema FastAPI writes; /docs/openapi-3.0.json is the same document in 3.0 words.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

DOCS_SCHEMA_URL = "/docs/openapi-3.0.json"


def _downgrade_schema(node: Any) -> Any:
    """One JSON-schema node (and its children) from 3.1 (JSON Schema 2020-12) to 3.0 words."""
    if isinstance(node, list):
        return [_downgrade_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _downgrade_schema(value) for key, value in node.items()}
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            out["nullable"] = True
            if len(rest) == 1:
                del out[key]
                out = {**rest[0], **out}
            else:
                out[key] = rest
    kind = out.get("type")
    if isinstance(kind, list):  # "type": ["string", "null"]
        kinds = [k for k in kind if k != "null"]
        if len(kinds) < len(kind):
            out["nullable"] = True
        out["type"] = kinds[0] if len(kinds) == 1 else kinds
    if "contentMediaType" in out:  # a file upload: 3.0 says format binary
        del out["contentMediaType"]
        out["format"] = "binary"
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if isinstance(out.get("examples"), list):
        examples = out.pop("examples")
        if examples:
            out["example"] = examples[0]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), int | float) and not isinstance(out[bound], bool):
            out[plain] = out[bound]
            out[bound] = True
    return out


def openapi_30(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of an OpenAPI 3.1 document that Swagger UI 4 renders (OpenAPI 3.0.3)."""
    doc = copy.deepcopy(schema)
    doc["openapi"] = "3.0.3"
    components = doc.get("components", {})
    if "schemas" in components:
        components["schemas"] = {
            name: _downgrade_schema(s) for name, s in components["schemas"].items()
        }
    for path_item in doc.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            for param in operation.get("parameters", []):
                if "schema" in param:
                    param["schema"] = _downgrade_schema(param["schema"])
            responses = operation.get("responses", {}).values()
            bodies = [operation.get("requestBody", {}), *responses]
            for body in bodies:
                for media in body.get("content", {}).values():
                    if "schema" in media:
                        media["schema"] = _downgrade_schema(media["schema"])
    return doc


def add_offline_docs(app: FastAPI) -> None:
    """Mount Swagger UI's files and serve /docs plus its 3.0 schema, all without a network."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get(DOCS_SCHEMA_URL, include_in_schema=False)
    async def docs_schema() -> JSONResponse:
        return JSONResponse(openapi_30(app.openapi()))

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=DOCS_SCHEMA_URL,
            title="histoscan API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )
