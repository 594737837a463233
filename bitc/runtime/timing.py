"""Wall-clock latency of repeated calls (what `Model.benchmark` and `bitc bench` time with)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def time_calls(call: Callable[[], Any], *, runs: int, warmup: int) -> list[float]:
    """Seconds of each of `runs` calls of `call`, after `warmup` untimed calls."""
    for _ in range(warmup):
        call()
    latencies = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - start)
    return latencies
