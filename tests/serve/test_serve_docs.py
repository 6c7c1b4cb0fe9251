"""The OpenAPI 3.1 -> 3.0 copy that the offline Swagger UI (4.15) reads."""

from __future__ import annotations

import json

from histoscan.serve.docs import openapi_30

SCHEMA_31 = {
    "openapi": "3.1.0",
    "info": {"title": "t", "version": "1"},
    "paths": {
        "/up": {
            "post": {
                "parameters": [
                    {"name": "k", "in": "query", "schema": {"type": ["integer", "null"]}}
                ],
                "requestBody": {
                    "content": {
                        "multipart/form-data": {"schema": {"$ref": "#/components/schemas/Body"}}
                    }
                },
                "responses": {
                    "200": {
                        "content": {
                            "application/json": {
                                "schema": {"anyOf": [{"type": "string"}, {"type": "null"}]}
                            }
                        }
                    }
                },
            }
        }
    },
    "components": {
        "schemas": {
            "Body": {
                "type": "object",
                "properties": {
                    "files": {
                        "type": "array",
                        "items": {"type": "string", "contentMediaType": "application/octet-stream"},
                    },
                    "mode": {"const": "fast"},
                    "size": {"type": "number", "exclusiveMinimum": 0, "examples": [3, 4]},
                    "either": {
                        "anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}],
                        "title": "Either",
                    },
                },
            }
        }
    },
}


def test_schema_is_rewritten_in_openapi_30_words():
    before = json.dumps(SCHEMA_31)
    doc = openapi_30(SCHEMA_31)
    assert json.dumps(SCHEMA_31) == before  # the 3.1 document served at /openapi.json is untouched
    assert doc["openapi"] == "3.0.3"
    props = doc["components"]["schemas"]["Body"]["properties"]
    assert props["files"]["items"] == {"type": "string", "format": "binary"}
    assert props["mode"] == {"enum": ["fast"]}
    assert props["size"] == {
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
        "example": 3,
    }
    assert props["either"] == {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "title": "Either",
        "nullable": True,
    }
    op = doc["paths"]["/up"]["post"]
    assert op["parameters"][0]["schema"] == {"type": "integer", "nullable": True}
    response = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert response == {"type": "string", "nullable": True}
    assert '"null"' not in json.dumps(doc)
