"""Errors every HTTP service renders the same way: a database outage, a wrong method."""

from __future__ import annotations

import psycopg
import psycopg_pool
from fastapi import FastAPI
from starlette.testclient import TestClient

from paystream_storage.errors import TRANSIENT_DB_ERRORS
from paystream_web.problems import MEDIA_TYPE, Problem
from paystream_web.service import RETRY_AFTER_S, install_problem_handlers


def _app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app, Problem, unavailable=TRANSIENT_DB_ERRORS)

    @app.get("/down")
    async def down() -> None:
        raise psycopg.OperationalError("connection refused")

    @app.get("/pool-exhausted")
    async def pool_exhausted() -> None:
        raise psycopg_pool.PoolTimeout("couldn't get a connection after 5.00 sec")

    @app.get("/bug")
    async def bug() -> None:
        raise ValueError("a bug, not an outage")

    @app.get("/only-get")
    async def only_get() -> dict[str, str]:
        return {"ok": "yes"}

    return app


def test_a_database_outage_is_503_with_retry_after_not_500() -> None:
    client = TestClient(_app(), raise_server_exceptions=False)
    for path in ("/down", "/pool-exhausted"):
        answer = client.get(path)
        assert answer.status_code == 503, path
        assert answer.headers["retry-after"] == str(RETRY_AFTER_S)
        assert answer.headers["content-type"] == MEDIA_TYPE
        body = answer.json()
        assert body["type"].endswith("/service-unavailable")
        assert "retry" in body["detail"]


def test_other_errors_stay_500() -> None:
    answer = TestClient(_app(), raise_server_exceptions=False).get("/bug")
    assert answer.status_code == 500
    assert "retry-after" not in answer.headers


def test_405_names_the_allowed_methods() -> None:
    answer = TestClient(_app()).post("/only-get")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET"
    assert answer.headers["content-type"] == MEDIA_TYPE
    assert answer.json()["type"].endswith("/method-not-allowed")
