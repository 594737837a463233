"""A long function split into pieces for ConvertLayout computes what the unsplit one does."""

from __future__ import annotations

import numpy as np

from bitc.codegen.cpu.layout_segments import apply_in_segments


def _chain(n: int):
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 16, 4, 4], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            value, skip = x, x
            for i in range(n):
                step = relax.op.nn.relu(value) if i % 2 else relax.op.add(value, relax.const(np.float32(0.01)))
                value = bb.emit(step)
                if i % 7 == 6:  # a value live across several pieces
                    value = bb.emit(relax.op.subtract(value, skip))
            out = bb.emit_output(value)
        bb.emit_func_output(out)
    return bb.get()


def _run(mod, xs):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.compile(relax.transform.LegalizeOps()(mod), target="llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(xs)).numpy()


def test_split_convert_layout_matches_unsplit_and_inlines_the_pieces():
    from tvm import relax

    mod = _chain(120)
    convert = relax.transform.ConvertLayout({})
    split = apply_in_segments(mod, convert, max_bindings=25)
    assert [g.name_hint for g in split.functions] == ["main"]
    xs = np.random.default_rng(0).standard_normal((1, 16, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(split, xs), _run(convert(mod), xs))


def test_short_functions_are_left_to_the_pass_unchanged():
    import tvm
    from tvm import relax

    mod = _chain(20)
    convert = relax.transform.ConvertLayout({})
    tvm.ir.assert_structural_equal(apply_in_segments(mod, convert, max_bindings=25), convert(mod))
