"""The `bitc` command: compile, run, bench, inspect, passes.

Exit codes: 0 success, 1 failure, 2 usage or bad input (one line on stderr, no traceback unless --verbose).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import math
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from bitc.errors import BadInputError, BitcError, first_line


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # the pass flags come from the pass registry, which imports every pass (~1 s): only `compile` pays for it
    parser = _parser(pass_flags=argv[:1] == ["compile"])
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return int(args.handler(args) or 0)
    except (KeyboardInterrupt, Exception) as exc:
        if isinstance(exc, KeyboardInterrupt) or _interrupt_delivered:
            # native code (TVM's compile) turns an interrupt raised in a Python callback into its own error
            _error("interrupted; no output was written")
            return 130
        return _report_error(exc, verbose=getattr(args, "verbose", False))


_interrupt_delivered = False


def _report_error(exc: Exception, *, verbose: bool) -> int:
    """One line on stderr for a failure; the exit code."""
    if isinstance(exc, BitcError):
        _error(str(exc))
        return exc.exit_code
    if isinstance(exc, OSError):  # the file system refused: a full disk, a permission, a path that became a folder
        _error(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or first_line(exc)}")
        return 1
    if verbose:
        traceback.print_exception(exc)
    _error(f"internal error: {type(exc).__name__}: {first_line(exc)} (rerun with --verbose for details)")
    return 1


def _raise_interrupt(signum: int, frame: Any) -> None:
    # once: LLVM's own handler re-raises the signal after its clean-up, and a second interrupt escaping after
    # main() returned would end the process by SIGINT instead of exit code 130
    global _interrupt_delivered
    _interrupt_delivered = True
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def run() -> NoReturn:
    """The `bitc` command: `main()`, then the exit. After an interrupt the process leaves without the
    interpreter's shutdown, where a signal still pending from native code (LLVM re-raises it after its own
    clean-up) would raise a second KeyboardInterrupt and end the process by SIGINT instead of exit code 130."""
    code = main()
    if code != 130:
        sys.exit(code)
    with contextlib.suppress(BaseException):  # this process's temp folder; outputs were written atomically
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    os._exit(code)


def _error(message: str) -> None:
    from bitc.console import printable  # messages carry names from models and manifests: no raw control bytes

    print(f"bitc: error: {printable(message)}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit code 2 like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"bitc: error: {message} (see '{self.prog} --help')\n")


def _parser(pass_flags: bool = True) -> argparse.ArgumentParser:
    parser = _Parser(prog="bitc", description="Ahead-of-time compiler for binarized and low-bit neural networks.")
    parser.add_argument("--version", action="version", version=f"bitc {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("compile", help="compile an ONNX model into a .bitc artifact")
    p.add_argument("model", help="ONNX file (external data beside it is read)")
    p.add_argument("-o", "--output", help="artifact path (default: MODEL name with .bitc)")
    p.add_argument("--config", metavar="bitc.toml", help="compile options from a TOML file (flags override it)")
    p.add_argument(
        "--target",
        help="cpu (this machine), cpu:<llvm cpu name>, cuda (this GPU, else sm_80) or cuda:sm_XY (default: cpu)",
    )
    p.add_argument("--passes", help="comma-separated pass pipeline (default: the standard clean-ups); see 'passes'")
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=D0,D1,...",
        help="fix an input's shape; given again for the same input, compiles one more size into the artifact",
    )
    p.add_argument(
        "--dim",
        action="append",
        default=[],
        metavar="NAME=N[,N...]",
        help="fix a named dynamic dimension in every input that has it; several sizes compile one size each",
    )
    if pass_flags:
        _add_pass_flags(p)
    p.add_argument(
        "--prefill-chunk",
        type=int,
        metavar="S",
        help="a decoder with a dynamic token count: prompt tokens per prefill step (default 32; 1: none)",
    )
    p.add_argument("--tune-trials", type=int, metavar="N", help="MetaSchedule trials to run (default 0)")
    p.add_argument("--tuning-db", metavar="DIR", help="tuning database folder (default: ~/.cache/bitc/tuning)")
    p.add_argument("--no-tuning-db", action="store_true", help="ignore tuned schedules (default schedules only)")
    p.add_argument("--dump-ir", metavar="DIR", help="write the model after each pass as DIR/NN_pass.onnx")
    p.add_argument("--verify", action="store_true", help="check every pass numerically (exact ones always are)")
    p.add_argument("--no-verify", action="store_true", help="skip the default numerical check of the exact passes")
    p.add_argument("--json", action="store_true", help="print the compile summary as JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=_compile)

    p = sub.add_parser("run", help="run an artifact on .npy inputs")
    p.add_argument("artifact")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    p.add_argument("--random", action="store_true", help="use seeded random inputs instead of files")
    p.add_argument("--output-dir", metavar="DIR", help="save each output as DIR/<name>.npy")
    p.add_argument("--threads", type=int, help="worker threads (default: one per core)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=_run)

    p = sub.add_parser("generate", help="generate tokens with a decoder artifact (compiled with --kv-bits)")
    p.add_argument("artifact")
    p.add_argument("--ids", metavar="ID,ID,...", help="prompt token ids")
    p.add_argument("--prompt", metavar="TEXT", help="prompt text (needs --tokenizer)")
    p.add_argument("--tokenizer", metavar="PATH", help="a transformers tokenizer folder or .gguf file (for --prompt)")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N")
    p.add_argument("--top-k", type=int, metavar="K", help="sample from the K most likely tokens (default: greedy)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="worker threads (default: one per core)")
    p.add_argument("--json", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=_generate)

    p = sub.add_parser("bench", help="measure an artifact's latency (optionally beside onnxruntime)")
    p.add_argument("artifact")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", default=None, help="comma-separated thread counts, e.g. 1,2 (default: all cores)")
    p.add_argument("--onnx", metavar="MODEL.onnx", help="also time this ONNX model with onnxruntime, same inputs")
    p.add_argument("--size", type=int, action="append", help="only this compiled input size (index; default: all)")
    p.add_argument("--json", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=_bench)

    p = sub.add_parser("inspect", help="describe an ONNX model or a .bitc artifact")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=_inspect)

    p = sub.add_parser("report", help="HTML report: latency per kernel, size, error and layers vs the source model")
    p.add_argument("model", help="the source ONNX model")
    p.add_argument("artifact", help="the .bitc artifact compiled from it")
    p.add_argument("-o", "--output", default="report.html")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=_report)

    p = sub.add_parser("passes", help="list the available passes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_passes)
    return parser


def _compile(args: argparse.Namespace) -> int:
    from bitc.compiler import compile as compile_model
    from bitc.console import CompileProgress

    output = args.output or Path(Path(args.model).name).with_suffix(".bitc")
    with CompileProgress(enabled=not args.json) as progress:
        result = compile_model(
            args.model,
            output,
            **_compile_options(args),
            on_pass=progress.on_pass,
            on_tuning=progress.on_tuning,
            on_stage=progress.on_stage,
        )
    summary = {
        "artifact": str(result.path),
        "size_bytes": result.path.stat().st_size,
        "target": result.manifest["target"]["name"],
        "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        "passes": [record.to_json() for record in result.pass_log],
        "tuning": result.manifest["tuning"],
        "generic_convs": result.manifest["codegen"].get("generic_convs", []),
    }
    if "variants" in result.manifest:
        summary["variants"] = [
            {"library": v["library"], "inputs": v["inputs"], "outputs": v["outputs"]}
            for v in result.manifest["variants"]
        ]
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        from bitc.console import print_compile_summary

        print_compile_summary(summary, verbose=args.verbose)
    return 0


def _compile_options(args: argparse.Namespace) -> dict[str, Any]:
    """bitc.toml (if given) overlaid with the flags that were given on the command line."""
    from bitc.config import load_config

    options = load_config(args.config) if args.config else {}
    flags = {
        "target": args.target,
        "passes": args.passes,
        "input_shapes": _shape_lists(args.input_shape) or None,
        "dims": _dim_values(args.dim) or None,
        "tune_trials": args.tune_trials,
        "prefill_chunk": args.prefill_chunk,
        "tuning_db": args.tuning_db,
        "use_tuning_db": False if args.no_tuning_db else None,
        "dump_ir": args.dump_ir,
        "verify": True if args.verify else None,
        "check_exact": False if args.no_verify else None,
    }
    options.update({key: value for key, value in flags.items() if value is not None})
    for name, given in _pass_flag_options(args).items():
        current = options.get(name)
        options[name] = {**(current if isinstance(current, dict) else {}), **given}
    return options


_PASS_FLAG = "pass_flag"  # argparse dest prefix of the flags derived from the passes' Options


def _add_pass_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per pass option that declares one (and a switch per pass that has one), from the registry."""
    from bitc.passes import registry
    from bitc.passes.options import NO_CONST, fields

    for item in registry.passes().values():
        if item.switch is not None:
            flag, help_text = item.switch
            parser.add_argument(flag, action="store_true", dest=f"{_PASS_FLAG}:{item.name}:", help=help_text)
        for field in fields(item.options_class):
            cli = field.metadata.get("flag")
            if cli is None:
                continue
            dest = f"{_PASS_FLAG}:{item.name}:{field.name}"
            if cli.const is not NO_CONST:
                parser.add_argument(cli.flag, action="store_const", const=cli.const, dest=dest, help=cli.help)
            else:
                parser.add_argument(cli.flag, metavar=cli.metavar, dest=dest, help=cli.help)


def _pass_flag_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The pass flags given on the command line as {pass: options}; a pass with any flag given is asked for."""
    from bitc.passes import registry
    from bitc.passes.options import NO_CONST, fields, flag_value, type_hints

    given: dict[str, dict[str, Any]] = {}
    for item in registry.passes().values():
        hints = type_hints(item.options_class)
        by_name = {f.name: f for f in fields(item.options_class)}
        options: dict[str, Any] | None = {} if getattr(args, f"{_PASS_FLAG}:{item.name}:", False) else None
        flags = []
        for name, field in by_name.items():
            value = getattr(args, f"{_PASS_FLAG}:{item.name}:{name}", None)
            if value is None:
                continue
            cli = field.metadata["flag"]
            flags.append(cli.flag)
            parsed = {name: value} if cli.const is not NO_CONST else flag_value(field, hints[name], value)
            options = {**(options or {}), **parsed}
        if item.needs_flag is not None and flags and item.needs_flag not in flags:
            raise BadInputError(f"{', '.join(flags)} needs {item.needs_flag}")
        if options is not None:
            given[item.name] = options
    return given


def _run(args: argparse.Namespace) -> int:
    import bitc
    from bitc.console import printable
    from bitc.npyfile import load_npy, save_npy

    if args.random and args.input:
        raise BadInputError("give either --input files or --random, not both")
    out_dir = _output_dir(args.output_dir) if args.output_dir else None
    model = bitc.load(args.artifact, num_threads=args.threads)
    if args.random:
        inputs = model.random_inputs()
    elif args.input:
        inputs = {}
        for item in args.input:
            name, _, file = item.partition("=")
            if not file:
                raise BadInputError(f"--input expects NAME=FILE.npy, got '{item}'")
            inputs[name] = load_npy(file)
    else:
        raise BadInputError(f"no inputs: give --input NAME=FILE.npy for {[s.name for s in model.inputs]} or --random")
    outputs = model.run(inputs)
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    for name, value in outputs.items():
        line = f"{name}: {value.dtype}{list(value.shape)}"
        if value.size:
            line += f" min={value.min():.6g} max={value.max():.6g} mean={value.mean():.6g}"
        if out_dir:
            file = out_dir / f"{_safe_name(name)}.npy"
            save_npy(file, value)
            line += f" -> {file}"
        print(printable(line))
    return 0


def _output_dir(text: str) -> Path:
    """--output-dir, checked before the model runs: an existing file or a path under one is refused."""
    folder = Path(text)
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise BadInputError(f"--output-dir {text}: {parent} is not a folder")
            break
    return folder


def _generate(args: argparse.Namespace) -> int:
    import time

    import bitc

    if (args.ids is None) == (args.prompt is None):
        raise BadInputError("give the prompt as --ids 1,2,3 or as --prompt TEXT (with --tokenizer)")
    _check_sampling(args)
    prompt_ids = _parse_ids(args.ids) if args.ids is not None else None
    tokenizer = _tokenizer(args.tokenizer) if args.tokenizer else None
    if args.prompt is not None:
        if tokenizer is None:
            raise BadInputError("--prompt needs --tokenizer (a transformers tokenizer folder or .gguf file)")
        prompt = list(tokenizer(args.prompt, add_special_tokens=False)["input_ids"])
    else:
        prompt = prompt_ids or []
    session = bitc.load(args.artifact, num_threads=args.threads).session()
    start = time.perf_counter()
    new = session.generate(prompt, args.max_new_tokens, top_k=args.top_k, temperature=args.temperature, seed=args.seed)
    seconds = time.perf_counter() - start
    result = {
        "prompt_tokens": len(prompt),
        "new_ids": [int(t) for t in new],
        "seconds": round(seconds, 3),
        "tokens_per_second": round((len(prompt) + len(new)) / seconds, 2) if seconds else None,
        "cache_bytes": session.cache.nbytes_in_use(),
    }
    if tokenizer is not None:
        result["text"] = tokenizer.decode([int(t) for t in new])
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if "text" in result:
        print(result["text"])
    print("new ids:", ",".join(map(str, result["new_ids"])))
    print(
        f"{len(prompt)} prompt + {len(new)} new tokens in {seconds:.2f} s "
        f"({result['tokens_per_second']} tokens/s), KV cache {result['cache_bytes'] / 2**20:.2f} MiB"
    )
    return 0


def _check_sampling(args: argparse.Namespace) -> None:
    """generate's numeric options, refused before the model loads (NaN passes every comparison)."""
    if not math.isfinite(args.temperature) or args.temperature <= 0:
        raise BadInputError(f"--temperature must be a finite number > 0, got {args.temperature}")
    if args.max_new_tokens < 0:
        raise BadInputError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.top_k is not None and args.top_k < 1:
        raise BadInputError(f"--top-k must be >= 1, got {args.top_k}")


_INT64_MAX = 2**63 - 1


def _parse_ids(text: str) -> list[int]:
    """--ids as token ids: non-negative integers that fit int64 (range against the vocabulary is checked by the
    session)."""
    try:
        ids = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise BadInputError(f"--ids must be comma-separated integers, got '{text[:80]}'") from None
    for token in ids:
        if not 0 <= token <= _INT64_MAX:
            raise BadInputError(f"--ids: token id {str(token)[:30]} is out of range (ids are 0 .. vocabulary size - 1)")
    return ids


def _tokenizer(path: str) -> Any:
    """A transformers tokenizer from a folder or a .gguf file (transformers is a compiler-side dependency)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise BadInputError("--tokenizer needs the transformers package (pip install transformers)") from None
    location = Path(path)
    if not location.exists():
        raise BadInputError(f"{path}: no such tokenizer folder or file")
    try:
        if location.suffix == ".gguf":
            return AutoTokenizer.from_pretrained(str(location.parent), gguf_file=location.name)
        return AutoTokenizer.from_pretrained(str(location))
    except Exception as exc:  # transformers raises OSError/ValueError/... with long texts
        raise BadInputError(f"{path}: cannot load a tokenizer ({first_line(exc)})") from None


def _bench(args: argparse.Namespace) -> int:
    from bitc.bench import bench_artifact

    threads = _thread_counts(args.threads) if args.threads is not None else [None]
    if args.runs < 1 or args.warmup < 0:
        raise BadInputError("--runs must be >= 1 and --warmup >= 0")
    rows = bench_artifact(
        args.artifact, threads=threads, runs=args.runs, warmup=args.warmup, onnx_path=args.onnx, sizes=args.size
    )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        from bitc.console import print_bench_table

        print_bench_table(args.artifact, rows)
    return 0


def _thread_counts(text: str) -> list[int | None]:
    """--threads 1,2,4: each an integer in the runtime's accepted range, refused before anything is measured."""
    from bitc.runtime.tvm_loader import check_num_threads

    items = text.split(",")
    if not all(item.strip() for item in items):
        raise BadInputError(f"--threads expects comma-separated thread counts like 1,2,4, got '{text[:80]}'")
    counts: list[int | None] = []
    for item in items:
        try:
            count = int(item)
        except ValueError:
            raise BadInputError(f"--threads: '{item.strip()[:40]}' is not a thread count, e.g. 1,2") from None
        counts.append(check_num_threads(count, "--threads"))
    return counts


def _inspect(args: argparse.Namespace) -> int:
    from bitc.inspect import inspect_file, json_safe

    info = inspect_file(args.file)
    if args.json:
        print(json.dumps(json_safe(info), indent=2, default=str, allow_nan=False))
    else:
        from bitc.console import print_inspect

        print_inspect(info, verbose=args.verbose)
    return 0


def _report(args: argparse.Namespace) -> int:
    from bitc.report import write_report

    if args.runs < 1:
        raise BadInputError("--runs must be >= 1")
    path = write_report(args.model, args.artifact, args.output, runs=args.runs)
    print(f"wrote {path}")
    return 0


def _passes(args: argparse.Namespace) -> int:
    from bitc.passes import DEFAULT_PIPELINE, available, passes
    from bitc.passes.options import describe, fields, type_hints

    summaries = available()
    options = {}
    for name, item in sorted(passes().items()):
        hints = type_hints(item.options_class)
        options[name] = {
            f.name: {"type": describe(hints[f.name]), "default": _default(f), "help": f.metadata.get("help", "")}
            for f in fields(item.options_class)
        }
    if args.json:
        result = {"passes": summaries, "options": options, "default_pipeline": list(DEFAULT_PIPELINE)}
        print(json.dumps(result, indent=2, default=str))
        return 0
    width = max(map(len, summaries))
    for name, doc in summaries.items():
        print(f"{name:<{width}}  {doc}")
        for key, spec in options[name].items():
            print(f"{'':<{width}}    {key} = {spec['default']!r}  ({spec['type']}) {spec['help']}")
    print(f"\ndefault pipeline: {','.join(DEFAULT_PIPELINE)}")
    return 0


def _default(field: Any) -> Any:
    import dataclasses

    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _parse_shape(item: str) -> tuple[str, list[int]]:
    name, _, dims = item.partition("=")
    try:
        shape = [int(d) for d in dims.replace("x", ",").split(",") if d.strip()]
    except ValueError:
        shape = []
    if not name or not shape:
        raise BadInputError(f"--input-shape expects NAME=D0,D1,..., got '{item}'")
    return name, shape


def _shape_lists(items: list[str]) -> dict[str, list[list[int]]]:
    """--input-shape flags as {input: [shape, ...]}: an input given twice is two sizes, never the last one wins."""
    lists: dict[str, list[list[int]]] = {}
    for item in items:
        name, shape = _parse_shape(item)
        if shape not in lists.setdefault(name, []):
            lists[name].append(shape)
    return lists


def _dim_values(items: list[str]) -> dict[str, list[int]]:
    """--dim NAME=N[,N...] flags as {name: [sizes]}."""
    values: dict[str, list[int]] = {}
    for item in items:
        name, _, sizes = item.partition("=")
        try:
            parsed = [int(v) for v in sizes.split(",") if v.strip()]
        except ValueError:
            parsed = []
        if not name or not parsed or any(v <= 0 for v in parsed):
            raise BadInputError(f"--dim expects NAME=N or NAME=N1,N2,... with positive sizes, got '{item}'")
        values.setdefault(name, []).extend(parsed)  # repeats are dropped with the other checks, in dim_values
    return values


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "output"


def _version() -> str:
    from bitc import __version__

    return __version__


if __name__ == "__main__":
    run()
