"""Per-kernel latency of a loaded model, from the Relax VM's instrumentation hook (no profiling build needed)."""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from bitc.runtime.model import Model

_VM_BOOKKEEPING = ("vm.builtin.",)


def profile_kernels(model: Model, inputs: Mapping[str, np.ndarray], runs: int = 10) -> list[dict[str, Any]]:
    """Mean milliseconds per run of every kernel the VM calls, heaviest first (VM bookkeeping grouped as one row).

    The hook adds a few microseconds per call, so tiny kernels read slightly high; the ranking is what matters.
    """
    totals: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.defaultdict(int)
    started: dict[str, float] = {}

    def instrument(_func: Any, symbol: Any, before: bool, _ret: Any, *_args: Any) -> int:
        now = time.perf_counter()
        name = str(symbol)
        if name.startswith(_VM_BOOKKEEPING):
            name = "(VM memory and shape bookkeeping)"
        if before:
            started[name] = now
        else:
            totals[name] += now - started.pop(name, now)
            calls[name] += 1
        return 0

    model.run(inputs)  # warm-up outside the measurement
    model.set_instrument(instrument)
    try:
        for _ in range(runs):
            model.run(inputs)
    finally:
        model.set_instrument(None)
    rows = [
        {"kernel": name, "calls_per_run": calls[name] // runs, "ms": total / runs * 1e3}
        for name, total in totals.items()
    ]
    return sorted(rows, key=lambda r: -r["ms"])
