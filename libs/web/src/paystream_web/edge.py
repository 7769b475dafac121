"""The one ASGI layer in front of a service's routes: request metrics for every request, and
the hot routes served directly.

A FastAPI request passes about ten layers before its endpoint runs (route matching, a
per-route exception wrapper, an AsyncExitStack, dependency solving, the endpoint runner)
and as many wrappers around each `send`; on a POST that is itself ~1.5 ms of CPU on a slow
core, that was a fifth of the work. A `DirectRoute` (a POST the service answers in volume)
is matched here, by its method and path, and its endpoint is called with the Request and
nothing in between. Its errors go to the app's own exception handlers, found as Starlette's
ExceptionMiddleware finds them, so every answer (problem+json, 503 with Retry-After) is the
one the routed endpoint gave; an error no handler takes propagates to
ServerErrorMiddleware (the 500 problem) as before.

The same endpoints stay registered on the app: the OpenAPI document, a wrong method (405
with Allow), a trailing slash and a mounted `root_path` go the usual way.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]
# A placeholder matches what Starlette's `str` convertor matches: one path segment.
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class DirectRoute:
    """POST `template` (as registered on the app, placeholders and all) answered by
    `endpoint`, which reads its placeholders from `request.path_params`."""

    template: str
    endpoint: Endpoint
    method: str = "POST"
    _pattern: re.Pattern[str] | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if _PLACEHOLDER.search(self.template):
            parts = _PLACEHOLDER.split(self.template)
            regex = "".join(
                f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part) for i, part in enumerate(parts)
            )
            object.__setattr__(self, "_pattern", re.compile(regex))

    def match(self, path: str) -> dict[str, str] | None:
        """The path parameters if `path` is this route's, else None."""
        if self._pattern is None:
            return {} if path == self.template else None
        found = self._pattern.fullmatch(path)
        return found.groupdict() if found is not None else None


class EdgeMiddleware:
    """Metrics (count by method, route template and status; latency by method and route
    template) for every HTTP request, and the `direct` routes called without the routing
    stack. Add it with `app.add_middleware(..., handlers=app.exception_handlers)`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        requests: Counter,
        latency: Histogram,
        routes: list[BaseRoute],
        handlers: Mapping[Any, Callable[..., Any]],
        direct: Sequence[DirectRoute] = (),
    ) -> None:
        self.app = app
        self.requests = requests
        self.latency = latency
        self.routes = routes
        # The app's dict itself: handlers registered later are seen too.
        self.handlers = handlers
        self.direct = tuple(direct)
        # What the router would have put in the scope for each direct route: the tracing
        # middleware outside reads the route's template from it (`http.route`).
        self.registered = {d.template: _registered(d, routes) for d in self.direct}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def record_status(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
            await send(message)

        method = scope["method"]
        route: str | None = None
        try:
            direct = self._direct(scope)
            if direct is None:
                await self.app(scope, receive, record_status)
                return
            hit, params = direct
            route = hit.template
            scope["path_params"] = params
            registered = self.registered[route]
            if registered is not None:
                scope["route"] = registered
                scope["endpoint"] = getattr(registered, "endpoint", None)
            request = Request(scope, receive)
            try:
                response = await hit.endpoint(request)
            except Exception as exc:
                handler = self._handler(exc)
                if handler is None:
                    raise  # ServerErrorMiddleware answers 500, as for a routed request
                if response_started:
                    raise RuntimeError(
                        "Caught handled exception, but response already started."
                    ) from exc
                if _is_async(handler):
                    response = await handler(request, exc)
                else:
                    response = await run_in_threadpool(handler, request, exc)
                exc.__traceback__ = None  # as Starlette does: handled, not kept
            await response(scope, receive, record_status)
        finally:
            template = route if route is not None else self._template(scope)
            self.requests.labels(method, template, str(status)).inc()
            self.latency.labels(method, template).observe(time.perf_counter() - started)

    def _direct(self, scope: Scope) -> tuple[DirectRoute, dict[str, str]] | None:
        # Under a root_path the app's routing strips it first: leave those to it.
        if not self.direct or scope.get("root_path"):
            return None
        method, path = scope["method"], scope["path"]
        for route in self.direct:
            if route.method == method:
                params = route.match(path)
                if params is not None:
                    return route, params
        return None

    def _handler(self, exc: Exception) -> Callable[..., Any] | None:
        """The handler Starlette's ExceptionMiddleware would pick (500 and Exception are
        ServerErrorMiddleware's, outside this layer)."""
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            handler = self.handlers.get(cls)
            if handler is not None:
                return handler
        return None

    def _template(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return str(getattr(route, "path", "unmatched"))
        return "unmatched"


def _is_async(handler: Callable[..., Any]) -> bool:
    """Whether calling `handler` gives an awaitable (a function or an object's __call__)."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - an instance's async __call__
    )


def _registered(direct: DirectRoute, routes: list[BaseRoute]) -> BaseRoute | None:
    """The app's own route for `direct` (same template and method), if it has one."""
    for route in routes:
        if getattr(route, "path", None) == direct.template and direct.method in (
            getattr(route, "methods", None) or ()
        ):
            return route
    return None
