"""An ingest API served over real HTTP, on the real broker and a fresh PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest
from pydantic import SecretStr

from paystream_ingest_api import main as ingest_main
from paystream_ingest_api.app import create_app
from paystream_ingest_api.deps import IngestDeps
from paystream_ingest_api.settings import IngestSettings
from paystream_keyring import KeyRing, KeyRingSettings, new_key_entry
from paystream_messaging.topics import ensure_topics
from paystream_storage.tenants import hash_api_key
from tests.support.asgi_server import serve
from tests.support.databases import libpq


@dataclass
class Tenant:
    id: uuid.UUID
    api_key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@dataclass
class IngestEnv:
    url: str
    settings: IngestSettings
    database_url: str
    a: Tenant
    b: Tenant
    client: httpx.Client

    def post(
        self,
        path: str,
        body: object,
        *,
        tenant: Tenant | None = None,
        key: str | None = None,
        **headers: str,
    ) -> httpx.Response:
        sent = {**(tenant or self.a).auth, "Idempotency-Key": key or str(uuid.uuid4()), **headers}
        return self.client.post(path, json=body, headers=sent)


def make_tenant(conn: psycopg.Connection[tuple[object, ...]], name: str) -> Tenant:
    tenant = Tenant(uuid.uuid4(), f"psk_test_{uuid.uuid4().hex}")
    conn.execute("INSERT INTO tenants (id, name) VALUES (%s, %s)", (tenant.id, name))
    conn.execute(
        "INSERT INTO api_keys (id, tenant_id, prefix, key_hash) VALUES (%s, %s, 'psk_', %s)",
        (uuid.uuid4(), tenant.id, hash_api_key(tenant.api_key)),
    )
    return tenant


def build_deps(settings: IngestSettings) -> IngestDeps:
    entry = new_key_entry("test-1")
    ring = KeyRing.from_settings(KeyRingSettings(keyring=SecretStr(entry), active_key_id="test-1"))
    return ingest_main.build_deps(settings, ring)


@pytest.fixture
def ingest_env(kafka_bootstrap: str, primary_database_url: str) -> Iterator[IngestEnv]:
    settings = IngestSettings(
        kafka_bootstrap=kafka_bootstrap,
        database_url=primary_database_url,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}",
        ingest_max_body_bytes=4096,
        ingest_publish_timeout_ms=3000,
    )
    ensure_topics(settings)
    with psycopg.connect(libpq(primary_database_url)) as conn:
        conn.execute("INSERT INTO countries VALUES ('DE', 'Germany')")
        a, b = make_tenant(conn, "tenant-a"), make_tenant(conn, "tenant-b")
    deps = build_deps(settings)
    with serve(create_app(deps)) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield IngestEnv(url, settings, primary_database_url, a, b, client)
    deps.publisher.close(5)
