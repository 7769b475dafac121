"""How routing judges gateway health (`paystream_core.ranking`): read by the gateway worker,
which ranks with it, and by `paystream routes explain`, which shows what a worker would do."""

from __future__ import annotations

from pydantic import Field

from paystream_config.settings import _Base


class RoutingSettings(_Base):
    # A gateway whose share of succeeded final attempts (succeeded / (succeeded + declined))
    # for a country and type falls below this is tried after its peers, until it recovers.
    routing_success_floor: float = Field(default=0.5, ge=0, le=1)
    # Over this many seconds of attempts: its bad attempts age out of it, and it is
    # promoted back once the rate is no longer below the floor.
    routing_health_window_s: float = Field(default=300.0, gt=0, le=86_400)
    # Fewer final attempts than this in the window: too few to judge, never demoted.
    routing_min_volume: int = Field(default=50, ge=1, le=1_000_000)
    # How often each worker re-reads the stats (in the background: a routing decision never
    # waits for the database; it uses the last stats read).
    routing_health_refresh_s: float = Field(default=5.0, gt=0, le=3600)
