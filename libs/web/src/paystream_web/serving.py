"""Running an HTTP service: one process tree under uvicorn or granian, until SIGTERM.

The app is named by an import path ("module:factory") rather than passed as an object:
with several workers each process imports and builds its own app (its own Kafka producer
and connection pool), which a pickled object could not give.
"""

from __future__ import annotations

import logging
from typing import Literal

import uvicorn

Server = Literal["uvicorn", "granian"]


def serve(
    app_factory: str,
    *,
    name: str,
    host: str,
    port: int,
    log: logging.Logger,
    server: Server | None = None,
    workers: int | None = None,
) -> None:
    """Serve `app_factory` on `host:port` and return once the server has shut down.

    `server=None` is for a service that offers no choice: it runs on uvicorn and its start
    line does not name the server. `workers=None` leaves the server's default (one
    process). Both servers finish in-flight requests and run the app's lifespan shutdown
    on SIGTERM/SIGINT. `log` is the service's logger, so start and stop lines carry its
    name.
    """
    if server is None:
        log.info("%s: listening on http://%s:%s", name, host, port)
    else:
        log.info("%s: %s listening on http://%s:%s", name, server, host, port)
    if server == "granian":
        _granian(app_factory, host, port, workers or 1)
    else:
        uvicorn.run(
            app_factory,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
    log.info("%s: stopped", name)


def _granian(app_factory: str, host: str, port: int, workers: int) -> None:
    # Imported here: only services that choose granian pay for loading it.
    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    Granian(
        app_factory,
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        log_level=LogLevels.warning,
    ).serve()
