"""Route registration for every dialect: a route declares its body and response models and who may call
it; from those the wrapper validates, authenticates and renders, and the OpenAPI document is built. A
dialect module only writes the handler in between."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from coordinator.api.auth import KEY_ID, client_address
from coordinator.api.fields import MAX_DEPTH, too_deep
from coordinator.api.services import SERVICES, Services
from coordinator.domain.records import Principal
from coordinator.service.errors import Forbidden, ServiceError

Access = Literal["public", "user", "admin"]
B = TypeVar("B", bound=BaseModel)


@dataclass(slots=True)
class Call:
    """One request as a handler sees it."""

    request: web.Request
    services: Services
    principal: Principal | None

    @property
    def caller(self) -> Principal:
        assert self.principal is not None, "route declared public but needs a caller"
        return self.principal

    def path(self, name: str) -> str:
        return self.request.match_info[name]


class ErrorBody(BaseModel):
    error: str
    field: str | None = None


REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def render_error(status: int, message: str, field: str | None) -> web.Response:
    body = {"error": message} if field is None else {"error": message, "field": field}
    return web.json_response(body, status=status)


ErrorRenderer = Callable[[int, str, str | None], web.Response]
Handler = Callable[..., Awaitable[Any]]


@dataclass(slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    body: type[BaseModel] | None
    response: Any
    status: int
    access: Access
    summary: str
    tag: str
    errors: Mapping[int, str]
    status_map: Mapping[int, int]
    query: type[BaseModel] | None = None
    error_model: Any = None


#: How Moorage's own routes (and, unless a dialect says otherwise, every dialect) name the use cases'
#: canonical fields in errors.
FIELD_NAMES: Mapping[str, str] = {
    "node_id": "nodeId",
    "region": "regionId",
    "region_id": "regionId",
    "fallback_region_id": "fallbackRegionId",
    "server_limit": "serverLimit",
    "instance_id": "id",
    "key_id": "id",
    "user_id": "userId",
    "client_id": "clientId",
    "released_at": "releasedAt",
    "catalog_image": "imagename",
}


@dataclass
class Router:
    """The routes of one dialect, with the dialect's error shape and its names for the use cases' fields
    (``field_names``: canonical -> the dialect's, in one table)."""

    tag: str
    render_error: ErrorRenderer = render_error
    field_names: Mapping[str, str] = field(default_factory=lambda: FIELD_NAMES)
    #: The dialect's own text for what the use cases' errors name by reason (its document's words).
    messages: Mapping[str, str] = field(default_factory=dict)
    #: What a non-admin hears on an admin route, in the dialect's words.
    admin_message: str = "this action needs an admin"
    #: The shape ``render_error`` answers in (the OpenAPI document shows it for every error).
    error_model: Any = None
    routes: list[Route] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        body: type[BaseModel] | None = None,
        response: Any = None,
        status: int = 200,
        access: Access = "user",
        summary: str = "",
        errors: Mapping[int, str] | None = None,
        status_map: Mapping[int, int] | None = None,
        query: type[BaseModel] | None = None,
    ) -> Callable[[Handler], Handler]:
        """``status_map`` re-words statuses where the dialect's document does (the panel answers 400 for an
        instance it cannot find). ``query``: a model of the query parameters, validated and handed to the
        handler after the body."""

        def register(handler: Handler) -> Handler:
            self.routes.append(
                Route(
                    method.upper(),
                    path,
                    handler,
                    body,
                    response,
                    status,
                    access,
                    summary or (handler.__doc__ or "").strip().split("\n")[0],
                    self.tag,
                    errors or {},
                    status_map or {},
                    query,
                    self.error_model,
                )
            )
            return handler

        return register

    def install(self, app: web.Application) -> None:
        for route in self.routes:
            app.router.add_route(route.method, route.path, self._wrap(route))

    def error(
        self,
        status: int,
        message: str,
        field: str | None,
        headers: Mapping[str, str] | None = None,
        status_map: Mapping[int, int] | None = None,
    ) -> web.Response:
        response = self.render_error((status_map or {}).get(status, status), message, field)
        response.headers.update(headers or {})
        return response

    @staticmethod
    def _render(route: Route, adapter: TypeAdapter[Any] | None, result: Any) -> web.StreamResponse:
        if isinstance(result, web.StreamResponse):
            return result
        if result is None or adapter is None:
            return web.Response(status=route.status if route.status != 200 else 204)
        payload = adapter.dump_python(result, mode="json", by_alias=True)
        return web.json_response(payload, status=route.status, dumps=_dumps)

    def _wrap(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        adapter: TypeAdapter[Any] | None = TypeAdapter(route.response) if route.response is not None else None

        async def endpoint(request: web.Request) -> web.StreamResponse:
            services = request.app[SERVICES]
            principal = None
            try:
                if route.access != "public":
                    principal = await services.auth.authenticate(request)
                    if route.access == "admin" and not principal.admin:
                        raise Forbidden(self.admin_message)
                args: list[Any] = [Call(request, services, principal)]
                if route.body is not None:
                    args.append(await parse_body(request, route.body))
                if route.query is not None:
                    args.append(parse_query(request, route.query))
                result = await route.handler(*args)
                response = self._render(route, adapter, result)
            except ServiceError as exc:
                name, message = exc.worded(self.field_names, self.messages)
                response = self.error(exc.status, message, name, exc.headers, route.status_map)
            if route.method in MUTATING:
                # Who did what, when, and how it ended; written before the caller hears the outcome.
                await services.access.audit(
                    {
                        "at": services.clock(),
                        "user_id": principal.user_id if principal else None,
                        "key_id": request.get(KEY_ID),
                        "client": client_address(request),
                        "method": route.method,
                        "path": request.path[:255],
                        "status": response.status,
                        "request_id": request.get(REQUEST_ID),
                    }
                )
            return response

        endpoint.__name__ = getattr(route.handler, "__name__", "endpoint")
        return endpoint


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class BodyError(ServiceError):
    status = 400


class UnsupportedBody(ServiceError):
    status = 415


JSON_TYPES = ("application/json",)


async def parse_body(request: web.Request, model: type[B]) -> B:
    """Validate the JSON body; the first problem is reported with the field's name, as panels expect. An
    empty body is an empty object (the autoscaler's CLI posts nothing); a body of another declared type
    (text/plain, a form) is refused with 415, one without a Content-Type is read as JSON (some clients
    send JSON so); nesting past MAX_DEPTH is refused."""
    raw = await request.read()
    if not raw.strip():
        return validate(model, {})
    declared = request.headers.get("Content-Type", "").strip()
    if declared and not (request.content_type in JSON_TYPES or request.content_type.endswith("+json")):
        raise UnsupportedBody(f"the request body must be application/json, not {request.content_type}")
    try:
        data = json.loads(raw)
    except RecursionError as exc:
        raise BodyError(f"the request body nests deeper than {MAX_DEPTH} levels") from exc
    except ValueError as exc:
        raise BodyError(f"the request body is not valid JSON: {exc}") from exc
    if too_deep(data):
        raise BodyError(f"the request body nests deeper than {MAX_DEPTH} levels")
    return validate(model, data)


def parse_query(request: web.Request, model: type[B]) -> B:
    """Query parameters by the model: a name given several times, or spelled ``name[]``, is a list."""
    data: dict[str, Any] = {}
    for key in set(request.query.keys()):
        values = request.query.getall(key)
        data[key] = values if len(values) > 1 or key.endswith("[]") else values[0]
    return validate(model, data)


def validate(model: type[B], data: Any) -> B:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"]) or "body"
        message = err["msg"]
        if err["type"] == "missing":
            message = "is required"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        raise BodyError(f"{name}: {message}", field=name) from exc
