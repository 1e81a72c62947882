"""The OpenAPI 3.1 document, built from the registered routes and their pydantic models."""

from __future__ import annotations

import re
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema

from coordinator.api.routing import ErrorBody, Route

REF = "#/components/schemas/{model}"


def _schema(tp: Any, mode: str, defs: dict[str, Any]) -> dict[str, Any]:
    schema = TypeAdapter(tp).json_schema(ref_template=REF, mode=mode, schema_generator=GenerateJsonSchema)  # type: ignore[arg-type]
    defs.update(schema.pop("$defs", {}))
    return schema


def build(routes: list[Route], version: str) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    error = _schema(ErrorBody, "serialization", defs)
    for r in routes:
        op: dict[str, Any] = {
            "operationId": f"{r.tag}_{r.handler.__name__}",
            "summary": r.summary,
            "tags": [r.tag],
            "responses": {},
        }
        params = re.findall(r"{(\w+)(?::[^}]*)?}", r.path)
        parameters: list[dict[str, Any]] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
        ]
        if r.query is not None:
            schema = _schema(r.query, "validation", defs)
            required = set(schema.get("required", []))
            for name, prop in schema.get("properties", {}).items():
                parameters.append({"name": name, "in": "query", "required": name in required, "schema": prop})
        if parameters:
            op["parameters"] = parameters
        if r.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _schema(r.body, "validation", defs)}},
            }
        ok: dict[str, Any] = {"description": "Success"}
        if r.response is not None:
            ok["content"] = {"application/json": {"schema": _schema(r.response, "serialization", defs)}}
        op["responses"][str(r.status if r.response is not None or r.status != 200 else 204)] = ok
        if r.access != "public":
            op["security"] = [{"apiKey": []}, {"bearer": []}]
            op["responses"]["401"] = {
                "description": "API key is required / API Key Invalid",
                "content": {"application/json": {"schema": error}},
            }
            if r.access == "admin":
                op["responses"]["403"] = {"description": "Needs an admin"}
        for status, text in {**r.errors, 500: "Internal error (the body names the request id)"}.items():
            op["responses"][str(status)] = {
                "description": text,
                "content": {"application/json": {"schema": error}},
            }
        path = re.sub(r"{(\w+):[^}]*}", r"{\1}", r.path)
        paths.setdefault(path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Moorage coordinator", "version": version},
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
