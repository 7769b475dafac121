"""The gateway worker's unit-test environment (`env`); the callback and reconciler tests
define their own `env` in their modules."""

from __future__ import annotations

import pytest

from tests.unit.services.worker_env import Env, make_env


@pytest.fixture
def env() -> Env:
    return make_env()
