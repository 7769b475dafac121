"""An in-memory gateway-health topic: workers' LiveViews publish to one ordered log and
every view receives it in that order (what the one-partition topic does), on the next turn
of the event loop or when a test says so."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from paystream_messaging.gateway_health import HealthRecord, decode, encode
from paystream_messaging.gateway_health_topic import LiveView


@dataclass
class HealthLog:
    records: list[HealthRecord] = field(default_factory=list)
    views: dict[str, tuple[LiveView, list[int]]] = field(default_factory=dict)
    auto: bool = True  # deliver on the next loop turn (like a broker round trip)
    lost: bool = False  # publishing fails: nothing reaches the log
    lagging: set[str] = field(default_factory=set)  # views that receive nothing for now

    def worker(self, worker_id: str, *, clock: Callable[[], float] | None = None) -> LiveView:
        view = LiveView(worker_id, self._send, clock=clock or time.time)
        self.views[worker_id] = (view, [0])
        return view

    def _send(self, record: HealthRecord) -> None:
        if self.lost:
            return
        self.records.append(decode(encode(record)))  # through JSON, as on the topic
        if self.auto:
            asyncio.get_running_loop().call_soon(self.deliver)

    def deliver(self) -> None:
        for worker_id, (view, position) in self.views.items():
            if worker_id in self.lagging:
                continue
            view.receive(self.records[position[0] :])
            position[0] = len(self.records)
