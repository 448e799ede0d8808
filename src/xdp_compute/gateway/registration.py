"""Limits on node registration per holder (issue #12: one holder token registered 300 nodes in 1.3 s).

Two limits, both public and both per holder principal:

- a rate: each holder token may call ``Register`` ``per_minute`` times in a burst, refilled at
  that rate (a token bucket); more calls get RESOURCE_EXHAUSTED and the node agent backs off;
- a cap: at most ``max_nodes_per_holder`` nodes of one holder per dataset (the store checks it
  at registration). More nodes of one holder never add a party (``domain.policy.NoiseShares``),
  and the cap keeps the secure-aggregation threshold, which must exceed a colluding party's
  nodes, from being pushed up to the whole roster.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from xdp_compute.errors import XdpError


class RegistrationRateLimited(XdpError):
    status, slug, title = 429, "registration-rate-limited", "Too many registrations"


@dataclass
class RegistrationLimits:
    max_nodes_per_holder: int = 4
    per_minute: int = 12
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, holder_id: str, holder_name: str, now: float | None = None) -> None:
        """Spend one registration of this holder, or raise RegistrationRateLimited."""
        now = time.monotonic() if now is None else now
        rate = self.per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(holder_id, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[holder_id] = (tokens, now)
                raise RegistrationRateLimited(
                    f"holder {holder_name!r} registered nodes too often: at most {self.per_minute} "
                    "registrations per minute per holder token (gateway setting XDP_REGISTRATIONS_PER_MINUTE); "
                    f"retry in {(1.0 - tokens) / rate:.0f}s")
            self._buckets[holder_id] = (tokens - 1.0, now)
