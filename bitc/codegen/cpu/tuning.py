"""MetaSchedule tuning with a persistent database, shared by every compile.

Tuning is opt-in (`--tune-trials N`): the default schedules already beat short tuning runs on this kind of
machine, and trials cost about a second each. Records are keyed by workload and target, so a model tuned once
(or a layer shape seen in another model) compiles with its tuned schedules from then on.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitc.codegen.cpu.schedules import default_schedule_pass
from bitc.errors import BadInputError

if TYPE_CHECKING:
    import tvm
    from tvm import tirx
    from tvm.s_tir.meta_schedule.builder import Builder, BuilderInput, BuilderResult

    from bitc.codegen.target import CpuTarget

ProgressCallback = Callable[[int, int], None]


def default_database_dir() -> Path:
    """$BITC_TUNING_DB, else $XDG_CACHE_HOME/bitc/tuning, else ~/.cache/bitc/tuning."""
    if os.environ.get("BITC_TUNING_DB"):
        return Path(os.environ["BITC_TUNING_DB"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "bitc" / "tuning"


@dataclass
class TuningOptions:
    trials: int = 0
    database_dir: Path | None = None
    use_database: bool = True
    on_progress: ProgressCallback | None = None

    @property
    def directory(self) -> Path:
        return self.database_dir or default_database_dir()


def apply(mod: tvm.IRModule, target: CpuTarget, options: TuningOptions) -> tuple[tvm.IRModule, dict[str, Any]]:
    """Tune first if asked, then use the database's record for a function only where it measures faster than
    the default schedule (a short tuning run easily finds something worse than a hand-written schedule).
    With a database, the returned module is already default-scheduled wherever no tuned record won."""
    report: dict[str, Any] = {"trials": options.trials}
    if options.trials > 0:
        report.update(tune(mod, target, options))
    if not options.use_database or not (options.directory / "database_workload.json").exists():
        return mod, report
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    database = ms.database.JSONDatabase(work_dir=str(options.directory))
    with target.tvm(), database:
        tuned = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    with target.tvm():
        default = default_schedule_pass(target)(mod)
    kept = 0
    for gvar, func in tuned.functions.items():
        fresh = _is_scheduled(func) and not _is_scheduled(mod[gvar])
        if fresh and _seconds(func, target) < _seconds(default[gvar], target):
            default[gvar] = func
            kept += 1
    report["tuned_functions"] = kept
    return default, report


def _is_scheduled(func: tvm.ir.BaseFunc) -> bool:
    from tvm import tirx

    return isinstance(func, tirx.PrimFunc) and func.attrs is not None and bool(func.attrs.get("tirx.is_scheduled", 0))


def _seconds(func: tirx.PrimFunc, target: CpuTarget) -> float:
    """Median time of one scheduled PrimFunc on random arguments (inf if it does not build)."""
    import numpy as np
    import tvm

    try:
        module = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
        runtime = tvm.compile(module, target=target.tvm()).jit()
        rng = np.random.default_rng(0)
        args = [  # PrimFunc parameters are buffers here: each has a static shape and dtype
            tvm.runtime.tensor(rng.standard_normal([int(d) for d in p.shape]).astype(str(p.dtype)), tvm.cpu())
            for p in func.params
        ]
        timer = runtime.time_evaluator("main", tvm.cpu(), number=3, repeat=5, min_repeat_ms=20)
        return float(np.median(timer(*args).results))
    except Exception:
        return float("inf")


def tune(mod: tvm.IRModule, target: CpuTarget, options: TuningOptions) -> dict[str, Any]:
    """Run `options.trials` MetaSchedule trials over the module's fused functions, spread evenly."""
    try:
        import psutil  # noqa: F401  (MetaSchedule's runner needs it)
        import xgboost  # noqa: F401  (its default cost model)
    except ImportError as exc:
        raise BadInputError(f"--tune-trials needs the tuning extras ({exc.name}): pip install 'bitc[tune]'") from None
    from tvm.s_tir import meta_schedule as ms

    os.environ.setdefault("TVM_NUM_THREADS", str(target.num_cores))  # runner processes measure on every core
    with _frames_without_files_skip_module_scan():
        import tvm.s_tir.tensor_intrin  # noqa: F401  (what MetaSchedule's TuneContext imports first)
    options.directory.mkdir(parents=True, exist_ok=True)
    tasks = ms.relax_integration.extract_tasks(mod, target.tvm())
    per_task = max(1, math.ceil(options.trials / max(1, len(tasks))))
    start = time.perf_counter()
    ms.relax_integration.tune_relax(
        mod,
        params={},
        target=target.tvm(),
        work_dir=str(options.directory),
        max_trials_global=options.trials,
        max_trials_per_task=per_task,
        num_trials_per_iter=min(64, per_task),
        builder=_progress_builder(options.trials, options.on_progress),
        strategy=_search_strategy(per_task),
        seed=0,
    )
    return {"tasks": len(tasks), "tuning_seconds": round(time.perf_counter() - start, 1)}


@contextlib.contextmanager
def _frames_without_files_skip_module_scan() -> Iterator[None]:
    """TVMScript parses each of MetaSchedule's tensor intrinsics after an `inspect.stack()`, and for every frame
    whose file is a pseudo-name ("<frozen importlib._bootstrap>", on every import's stack) `inspect.getmodule`
    rescans all of sys.modules: importing the intrinsics took 80 s in a bare process and 120 s after bitc's
    imports on a 2-core Zen 3. Such a frame belongs to no module file, so the scan's answer is None anyway."""
    original = inspect.getmodule

    def getmodule(obj: object, _filename: str | None = None) -> types.ModuleType | None:
        if inspect.isframe(obj) and _filename is not None and _filename.startswith("<"):
            return None
        return original(obj, _filename)

    inspect.getmodule = getmodule
    try:
        yield
    finally:
        inspect.getmodule = original


def _search_strategy(trials_per_task: int) -> Any:
    """MetaSchedule's evolutionary search with its population sized to the trial budget: the default (512
    candidates, 4 generations, each scored by the cost model) is what a 6-8 trial run spent most of its time on
    (test_tuning 185 s -> 131 s on a 2-core Zen 3). Budgets of 64+ trials per task get the default."""
    from tvm.s_tir import meta_schedule as ms

    population = min(512, max(32, 8 * trials_per_task))
    return ms.search_strategy.EvolutionarySearch(
        population_size=population,
        init_min_unmeasured=min(50, population // 2),
        genetic_num_iters=4 if population >= 512 else 2,
    )


def _build_candidate(
    mod: tvm.IRModule, target: tvm.target.Target, _params: dict[str, tvm.runtime.Tensor] | None
) -> tvm.runtime.Module:
    """MetaSchedule's default build, minus its import of every tensor intrinsic (~27 s per worker process)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _progress_builder(total: int, on_progress: ProgressCallback | None) -> Builder:
    """A LocalBuilder that reports after each batch (measure callbacks fire late with the gradient scheduler)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import LocalBuilder, PyBuilder

    inner = LocalBuilder(max_workers=os.cpu_count() or 1, f_build=_build_candidate)

    @derived_object
    class ProgressBuilder(PyBuilder):
        def __init__(self) -> None:
            super().__init__()
            self.done = 0

        def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
            results = inner.build(build_inputs)
            self.done = min(total, self.done + len(build_inputs))
            if on_progress is not None:
                on_progress(self.done, total)
            return results

    return ProgressBuilder()
