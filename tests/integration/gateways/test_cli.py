"""`paystream connections|keys|sandbox` against real PostgreSQL and a real process."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from paystream_cli.commands.connections import connections
from paystream_cli.commands.keys import keys
from paystream_cli.demo_seed import seed_routing
from paystream_config import DatabaseSettings
from paystream_storage.db import create_engine, sessionmaker
from paystream_storage.tenants import create_tenant
from tests.support.polling import wait_for

pytestmark = pytest.mark.integration

K1 = base64.b64encode(os.urandom(32)).decode()
K2 = base64.b64encode(os.urandom(32)).decode()
SECRETS = ("sk_test_cli_secret", "whsec_cli_secret", "whsec_rotated_secret", K1, K2)


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    async def seed() -> None:
        engine = create_engine(DatabaseSettings(database_url=database_url))
        try:
            async with sessionmaker(engine)() as session, session.begin():
                await seed_routing(session)
                await create_tenant(session, "acme")
        finally:
            await engine.dispose()

    asyncio.run(seed())
    return {
        "PAYSTREAM_DATABASE_URL": database_url,
        "PAYSTREAM_KEYRING": f"k1:{K1}",
        "PAYSTREAM_ACTIVE_KEY_ID": "k1",
    }


def run(command: object, args: list[str], env: dict[str, str], stdin: str = "") -> Result:
    result = CliRunner().invoke(command, args, input=stdin, env=env)  # type: ignore[arg-type]
    for secret in SECRETS:
        assert secret not in result.output, f"secret leaked in: {args}"
    return result


def test_add_list_rotate_without_ever_printing_secrets(env: dict[str, str]) -> None:
    added = run(
        connections,
        ["add", "acme", "stripe", "eu", "--set", "api_base=http://127.0.0.1:9/stripe"],
        env,
        stdin="sk_test_cli_secret\nwhsec_cli_secret\n",
    )
    assert added.exit_code == 0, added.output
    assert "version 1, encrypted under key k1" in added.output

    from_file = run(
        connections,
        ["add", "acme", "jsonpay", "main", "--credentials-file", "-"],
        env,
        stdin=json.dumps(
            {
                "base_url": "http://x",
                "merchant_id": "m",
                "api_secret": "sk_test_cli_secret",
                "webhook_secret": "whsec_cli_secret",
            }
        ),
    )
    assert from_file.exit_code == 0, from_file.output

    rotated = run(
        connections,
        ["rotate-secret", "acme", "stripe", "eu", "--field", "webhook_secret"],
        env,
        stdin="whsec_rotated_secret\n",
    )
    assert rotated.exit_code == 0, rotated.output
    assert "rotated webhook_secret of stripe/eu: version 2" in rotated.output

    listed = run(connections, ["list", "--tenant", "acme"], env)
    lines = listed.output.strip().splitlines()
    assert lines[0].split()[:5] == ["ID", "TENANT", "GATEWAY", "PROVIDER", "CODE"]
    assert [line.split()[2:7] for line in lines[1:]] == [
        ["jsonpay", "json", "main", "yes", "1"],
        ["stripe", "stripe", "eu", "yes", "2"],
    ]


def test_refusals_are_clear(env: dict[str, str]) -> None:
    on_command_line = run(connections, ["add", "acme", "stripe", "x", "--set", "api_key=sk"], env)
    unknown_tenant = run(connections, ["add", "nobody", "stripe", "x"], env, stdin="a\nb\n")
    unknown_gateway = run(connections, ["add", "acme", "paypal", "x"], env)
    no_ring = run(connections, ["list"], {**env, "PAYSTREAM_KEYRING": ""})
    missing_ring = run(
        connections, ["add", "acme", "stripe", "x"], {**env, "PAYSTREAM_KEYRING": ""}
    )

    assert on_command_line.exit_code == 2
    assert "api_key is secret" in on_command_line.output
    assert "no tenant 'nobody'" in unknown_tenant.output
    assert "no gateway 'paypal'" in unknown_gateway.output
    assert no_ring.exit_code == 0  # listing needs no key material
    assert missing_ring.exit_code == 2
    assert "PAYSTREAM_KEYRING" in missing_ring.output


def test_keys_rotate(env: dict[str, str]) -> None:
    for code in ("a", "b"):
        result = run(
            connections,
            ["add", "acme", "stripe", code],
            env,
            stdin="sk_test_cli_secret\nwhsec_cli_secret\n",
        )
        assert result.exit_code == 0, result.output
    ring = {**env, "PAYSTREAM_KEYRING": f"k1:{K1},k2:{K2}", "PAYSTREAM_ACTIVE_KEY_ID": "k2"}

    first = run(keys, ["rotate"], ring)
    second = run(keys, ["rotate"], ring)
    listed = run(connections, ["list"], ring)

    assert first.exit_code == 0, first.output
    assert "re-encrypted 2 row(s) under key k2" in first.output
    assert "rows per key: k2=2" in first.output
    assert "no rows left under: k1" in first.output
    assert "re-encrypted 0 row(s)" in second.output
    assert all(line.split()[7] == "k2" for line in listed.output.splitlines()[1:])
    # The new key alone now reads everything: the old one can leave the ring.
    only_k2 = {**env, "PAYSTREAM_KEYRING": f"k2:{K2}", "PAYSTREAM_ACTIVE_KEY_ID": "k2"}
    rotated = run(
        connections,
        ["rotate-secret", "acme", "stripe", "a", "--field", "webhook_secret"],
        only_k2,
        stdin="whsec_rotated_secret\n",
    )
    assert rotated.exit_code == 0, rotated.output


def test_keys_generate_prints_a_usable_entry() -> None:
    result = CliRunner().invoke(keys, ["generate", "2026-01"])
    kid, _, material = result.output.strip().partition(":")
    assert kid == "2026-01"
    assert len(base64.b64decode(material)) == 32


def test_sandbox_command_serves_until_stopped(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path / "sandbox.log").open("wb")
    program = "from paystream_cli.commands.sandbox import sandbox; sandbox()"
    proc = subprocess.Popen(
        [sys.executable, "-c", program, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/_sandbox/health").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=20, what="the sandbox to answer")
        spec = httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()
        assert "/_sandbox/faults/{provider}" in spec["paths"]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
        log.close()
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert code in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in (tmp_path / "sandbox.log").read_text()
