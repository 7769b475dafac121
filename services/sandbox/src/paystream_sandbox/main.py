"""Run the sandbox: `paystream sandbox` or `python -m paystream_sandbox.main`."""

from __future__ import annotations

import uvicorn

from paystream_sandbox.app import create_app
from paystream_sandbox.settings import SandboxSettings


def run(host: str | None = None, port: int | None = None) -> None:
    settings = SandboxSettings()
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=settings.port if port is None else port,
        log_level="info",
        # A line per request cost ~5% of the sandbox's CPU under load; the sandbox keeps its
        # own record of every call (`/_sandbox/ledger`).
        access_log=False,
        # Requests held by the `timeout` fault must not keep a stopping sandbox alive.
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    run()
