"""The OpenAPI 3.1 document, built from the registered routes and their pydantic models."""

from __future__ import annotations

import re
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema

from coordinator.api.fields import MAX_ID
from coordinator.api.routing import ErrorBody, Route

REF = "#/components/schemas/{model}"


#: Constraints pydantic leaves in its own words where a validator wraps the type, in JSON Schema's.
KEYWORDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}
#: Path parameters that are not free text.
PATH_PARAMS: dict[str, dict[str, Any]] = {
    "clientId": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
    "node_id": {"type": "integer", "minimum": 1, "maximum": 999_999_999},
}


def _json_schema(value: Any) -> Any:
    if isinstance(value, dict):
        return {KEYWORDS.get(k, k): _json_schema(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_schema(v) for v in value]
    return value


def _schema(tp: Any, mode: str, defs: dict[str, Any]) -> dict[str, Any]:
    schema = TypeAdapter(tp).json_schema(ref_template=REF, mode=mode, schema_generator=GenerateJsonSchema)  # type: ignore[arg-type]
    for name, found in _json_schema(schema.pop("$defs", {})).items():
        if defs.setdefault(name, found) != found:
            raise ValueError(f"two models are named {name} in the OpenAPI document: rename one")
    converted: dict[str, Any] = _json_schema(schema)
    return converted


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def build(routes: list[Route], version: str) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        error = _schema(r.error_model or ErrorBody, "serialization", defs)
        op: dict[str, Any] = {
            "operationId": f"{r.tag}_{r.handler.__name__}",
            "summary": r.summary,
            "tags": [r.tag],
            "responses": {},
        }
        params = re.findall(r"{(\w+)(?::[^}]*)?}", r.path)
        parameters: list[dict[str, Any]] = [
            {"name": p, "in": "path", "required": True, "schema": PATH_PARAMS.get(p, {"type": "string"})}
            for p in params
        ]
        if r.query is not None:
            schema = _schema(r.query, "validation", defs)
            required = set(schema.get("required", []))
            for name, prop in schema.get("properties", {}).items():
                parameters.append({"name": name, "in": "query", "required": name in required, "schema": prop})
        if parameters:
            op["parameters"] = parameters
        if r.body is not None:
            body = _schema(r.body, "validation", defs)
            # An empty body is read as {}: optional where no field is required (a PATCH, a bare POST).
            needed = bool(r.body.model_json_schema().get("required"))
            op["requestBody"] = {"required": needed, "content": _json(body)}
        ok: dict[str, Any] = {"description": "Success"}
        if r.response is str:
            ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
        elif r.response is not None:
            ok["content"] = _json(_schema(r.response, "serialization", defs))
        op["responses"][str(r.status if r.response is not None or r.status != 200 else 204)] = ok
        errors: dict[int, str] = {}
        if r.body is not None or r.query is not None or params:
            errors[400] = "A field is missing or invalid (the answer names it)"
        if r.body is not None:
            errors[415] = "The body is not application/json"
        if params:
            errors[404] = "Nothing of that id or name (or not visible to the caller)"
        if r.access != "public":
            op["security"] = [{"apiKey": []}, {"bearer": []}]
            errors[401] = "API key is required / API Key Invalid"
            errors[429] = "Too many failed authentications from this address (see Retry-After)"
            if r.access == "admin":
                errors[403] = "Needs an admin"
        errors |= dict(r.errors)
        errors[500] = "Internal error (the body names the request id)"
        for status, text in sorted(errors.items()):
            shown = r.status_map.get(status, status)
            if str(shown) in op["responses"] and shown != status:
                continue  # the dialect answers this as another status, documented there
            op["responses"][str(shown)] = {"description": text, "content": _json(error)}
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
