"""Routes on a running stack, read from its database and changed with `paystream routes`
as an operator runs it beside the stack; and put back as they were, for a module on a
stack other modules share."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from tests.e2e.stack import Stack


def route_table(stack: Stack) -> list[tuple[Any, ...]]:
    """Every route with its priority, switch and weight, in a stable order."""
    return stack.query(
        "SELECT country, transaction_type, gateway_code, priority, enabled, weight"
        " FROM gateway_countries ORDER BY 1, 2, 3"
    )


def routes(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real command line, with the stack's database (and `env`, settings it reads)."""
    environment = {
        **os.environ,
        **env,
        "PAYSTREAM_DATABASE_URL": stack.env["PAYSTREAM_DATABASE_URL"],
    }
    done = subprocess.run(
        [sys.executable, "-m", "paystream_cli.main", "routes", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def restore_routes(stack: Stack, table: list[tuple[Any, ...]]) -> None:
    """The routes of `table` (see route_table) back, with the operator's commands: each
    country and type that differs is set again (its levels, weights), then switched."""
    wanted: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for row in table:
        wanted.setdefault((row[0], row[1]), []).append(row)
    now = route_table(stack)
    for (country, kind), rows in wanted.items():
        if [r for r in now if (r[0], r[1]) == (country, kind)] == rows:
            continue
        levels: dict[int, list[str]] = {}
        for _, _, gateway, priority, _, weight in rows:
            levels.setdefault(priority, []).append(f"{gateway}:{weight}")
        args = [",".join(levels[p]) for p in sorted(levels)]
        routes(stack, "set", country, kind, *args, "--actor", "e2e-restore")
        # `set` keeps a gateway's switch, and a gateway it adds starts enabled.
        switched = {r[2]: r[4] for r in route_table(stack) if (r[0], r[1]) == (country, kind)}
        for _, _, gateway, _, enabled, _ in rows:
            if switched[gateway] != enabled:
                routes(stack, "enable" if enabled else "disable", country, kind, gateway)
