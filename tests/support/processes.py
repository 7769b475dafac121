"""Running paystream commands as real processes, so tests can kill -9 them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def paystream(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start `paystream ARGS` with `env` added to this environment; output goes to `log`."""
    full_env = {**os.environ, **env}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "paystream_cli.main", *args],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def terminate(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout)
