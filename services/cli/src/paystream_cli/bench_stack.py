"""A private `paystream dev` for a benchmark: its environment and its process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import IO

from paystream_devinfra import free_port


def private_env(home: Path, /, **extra: str) -> dict[str, str]:
    """This process's environment for a stack of its own: embedded broker and database (the
    configured ones are left out), runtime files under `home`, free ports, quiet logs."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PAYSTREAM_KAFKA_BOOTSTRAP", "PAYSTREAM_DATABASE_URL")
    }
    env.update(
        PAYSTREAM_HOME=str(home),
        PAYSTREAM_DEV_API_PORT=str(free_port()),
        PAYSTREAM_DEV_CALLBACK_PORT=str(free_port()),
        PAYSTREAM_DEV_SANDBOX_PORT=str(free_port()),
        PAYSTREAM_LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


def start_dev(env: dict[str, str], output: IO[bytes] | int) -> subprocess.Popen[bytes]:
    """`paystream dev` in a session of its own (stop it with os.killpg); stdout and stderr
    go to `output`."""
    return subprocess.Popen(
        [sys.executable, "-m", "paystream_cli.main", "dev"],
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
