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


def _conv_net(stack: bool):
    """conv → relu → (stack of two copies, or add) → conv: the middle op decides whether layout inference works."""
    from tvm import relax

    rng = np.random.default_rng(1)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 16, 8, 8], "float32"))
    w1 = relax.const(rng.standard_normal((16, 16, 3, 3)).astype(np.float32))
    w2 = relax.const(rng.standard_normal((16, 16, 1, 1)).astype(np.float32))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.relu(bb.emit(relax.op.nn.conv2d(x, w1, padding=1))))
            if stack:
                s = bb.emit(relax.op.stack([y, y], axis=1))  # [1, 2, 16, 8, 8]
                y = bb.emit(relax.op.reshape(relax.op.sum(s, axis=[1]), [1, 16, 8, 8]))
            else:
                y = bb.emit(relax.op.add(y, y))
            out = bb.emit_output(relax.op.nn.conv2d(y, w2))
        bb.emit_func_output(out)
    return bb.get()


def _conv_layouts(mod) -> list[str]:
    from tvm import relax

    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.nn.conv2d":
            found.append(str(expr.attrs.data_layout))

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return found


def test_a_failing_op_stays_in_its_layout_and_its_neighbours_are_converted():
    """A pass that fails whenever it sees one op (as TVM's layout inference does on some ops): only that op's
    binding is left as it was, every conv around it still converts, and the result computes the same."""
    from tvm import relax

    from bitc.codegen.cpu.layout_segments import apply_isolating_failures
    from bitc.codegen.cpu.nchwc import conv_layouts

    convert = relax.transform.ConvertLayout({}, layout_cb=lambda call: conv_layouts(call, 16))

    def fails_on_add(mod):
        found = []
        for func in mod.functions.values():
            if isinstance(func, relax.Function):
                relax.analysis.post_order_visit(
                    func.body,
                    lambda e: found.append(e) if getattr(getattr(e, "op", None), "name", "") == "relax.add" else None,
                )
        if found:
            raise RuntimeError("layout inference failed")
        return convert(mod)

    mod = _conv_net(stack=False)
    converted, left = apply_isolating_failures(mod, fails_on_add)
    assert len(left) == 1 and left[0].startswith("relax.add")
    assert _conv_layouts(converted) == ["NCHW16c", "NCHW16c"]
    xs = np.random.default_rng(0).standard_normal((1, 16, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(_legalize_blocked(converted), xs), _run(mod, xs), rtol=1e-5, atol=1e-4)


def _legalize_blocked(mod):
    """Blocked convs lowered by bitc's compute (TVM has none), the rest left to `_run`'s LegalizeOps."""
    from tvm import relax

    from bitc.codegen.cpu import nchwc

    return relax.transform.LegalizeOps({"relax.nn.conv2d": nchwc.legalize_conv2d})(mod)


def test_stack_is_converted_as_concat_and_computes_the_same():
    from bitc.codegen.cpu import nchwc

    mod = _conv_net(stack=True)
    refused: list[str] = []
    converted = nchwc.convert_conv_layout(mod, block=16, refused=refused)
    assert refused == [] and _conv_layouts(converted) == ["NCHW16c", "NCHW16c"]
    xs = np.random.default_rng(0).standard_normal((1, 16, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(_legalize_blocked(converted), xs), _run(mod, xs), rtol=1e-5, atol=1e-4)
