"""The edge layer: a direct route answers exactly as the routed endpoint would (errors
included), and every request is counted under its route template."""

from __future__ import annotations

from typing import Any

import psycopg
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.responses import JSONResponse, Response
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from paystream_storage.errors import TRANSIENT_DB_ERRORS
from paystream_web.edge import DirectRoute, EdgeMiddleware
from paystream_web.problems import MEDIA_TYPE, Problem
from paystream_web.service import install_problem_handlers

ITEM = "/v1/items/{kind}/{item_id}"


class Edge:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "requests_total", "", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram("request_seconds", "", ["method", "route"], registry=self.registry)
        self.direct_calls = 0
        self.app = self._app()

    def count(self, method: str, route: str, status: int) -> float:
        labels = {"method": method, "route": route, "status": str(status)}
        return self.registry.get_sample_value("requests_total", labels) or 0.0

    def _app(self) -> FastAPI:
        app = FastAPI()
        install_problem_handlers(app, Problem, unavailable=TRANSIENT_DB_ERRORS)

        async def item(request: Request, kind: str, item_id: str) -> Response:
            if item_id == "missing":
                raise Problem("not-found", f"no {kind} {item_id}")
            if item_id == "db-down":
                raise psycopg.OperationalError("connection refused")
            if item_id == "bug":
                raise ValueError("a bug")
            return JSONResponse(
                {"kind": kind, "id": item_id, "body": (await request.body()).decode()}
            )

        @app.post(ITEM)
        async def routed(request: Request, kind: str, item_id: str) -> Response:
            return await item(request, kind, item_id)

        async def direct(request: Request) -> Response:
            self.direct_calls += 1
            return await item(request, request.path_params["kind"], request.path_params["item_id"])

        @app.get("/plain")
        async def plain() -> dict[str, str]:
            return {"ok": "yes"}

        app.add_middleware(
            EdgeMiddleware,
            requests=self.requests,
            latency=self.latency,
            routes=app.router.routes,
            handlers=app.exception_handlers,
            direct=[DirectRoute(ITEM, direct)],
        )
        return app


def test_a_direct_route_is_called_with_its_path_parameters_and_counted() -> None:
    edge = Edge()
    answer = TestClient(edge.app).post("/v1/items/book/b-1", content=b"hello")
    assert answer.status_code == 200
    assert answer.json() == {"kind": "book", "id": "b-1", "body": "hello"}
    assert edge.direct_calls == 1
    assert edge.count("POST", ITEM, 200) == 1


def test_a_direct_request_carries_its_route_as_the_router_would() -> None:
    """The tracing middleware, outside the edge, names the span's route from scope["route"]."""
    edge = Edge()
    seen: list[Any] = []
    inner = edge.app.build_middleware_stack()

    async def outer(scope: Scope, receive: Receive, send: Send) -> None:
        await inner(scope, receive, send)
        seen.append(scope.get("route"))

    edge.app.middleware_stack = outer
    assert TestClient(edge.app).post("/v1/items/book/b-1").status_code == 200
    assert edge.direct_calls == 1
    assert getattr(seen[0], "path_format", None) == ITEM


def test_direct_errors_are_the_app_handlers_answers() -> None:
    edge = Edge()
    client = TestClient(edge.app, raise_server_exceptions=False)
    missing = client.post("/v1/items/book/missing")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == MEDIA_TYPE
    assert missing.json()["instance"] == "/v1/items/book/missing"
    down = client.post("/v1/items/book/db-down")
    assert down.status_code == 503
    assert "retry-after" in down.headers
    bug = client.post("/v1/items/book/bug")
    assert bug.status_code == 500
    assert bug.headers["content-type"] == MEDIA_TYPE
    assert bug.json()["type"].endswith("/internal-error")
    assert edge.direct_calls == 3
    for status in (404, 503, 500):
        assert edge.count("POST", ITEM, status) == 1


def test_other_methods_and_paths_take_the_routed_way() -> None:
    edge = Edge()
    client = TestClient(edge.app)
    wrong_method = client.get("/v1/items/book/b-1")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert client.post("/v1/items/book/b-1/extra").status_code == 404
    assert client.get("/plain").json() == {"ok": "yes"}
    assert edge.direct_calls == 0
    assert edge.count("GET", ITEM, 405) == 0  # a partial match is not the route
    assert edge.count("GET", "unmatched", 405) == 1
    assert edge.count("POST", "unmatched", 404) == 1
    assert edge.count("GET", "/plain", 200) == 1


def test_direct_route_matching() -> None:
    async def endpoint(_: Request) -> Response:
        return Response()

    fixed = DirectRoute("/v1/deposits", endpoint)
    assert fixed.match("/v1/deposits") == {}
    assert fixed.match("/v1/deposits/") is None
    templated = DirectRoute("/v1/callbacks/{gateway}/{connection_id}", endpoint)
    assert templated.match("/v1/callbacks/json.pay/c-1") == {
        "gateway": "json.pay",
        "connection_id": "c-1",
    }
    assert templated.match("/v1/callbacks/jsonpay") is None
    assert templated.match("/v1/callbacks/jsonpay/") is None
    assert templated.match("/v1/callbacks/a/b/c") is None
