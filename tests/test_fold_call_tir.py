"""Folding all-constant call_tirs builds each PrimFunc once and leaves what TVM's FoldConstant would give."""

from __future__ import annotations

from test_legalize_cache import _chain_model

from bitc.codegen.relax import fold_call_tir


def _legalized(path) -> tuple:
    """The chain as the build sees it just before constant folding, and the target to lower it in."""
    import tvm
    from tvm import relax

    from bitc.codegen.cpu import nchwc
    from bitc.codegen.cpu.build import legalize_map
    from bitc.codegen.relax.legalize_cache import cached_legalize_map
    from bitc.codegen.relax_import import to_relax
    from bitc.codegen.target import parse_target
    from bitc.frontend import load_onnx
    from bitc.passes import run_pipeline

    model, _ = run_pipeline(load_onnx(path, None), None, check_exact=False)
    target = parse_target("cpu")
    mod = to_relax(model, "chain", target)
    with target.tvm():
        mod = nchwc.cancel_layout_round_trips(nchwc.convert_conv_layout(mod, block=target.vector_lanes))
        legalize = relax.transform.LegalizeOps(customize_legalize_map=cached_legalize_map(legalize_map()))
        passes = [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings(), legalize]
        return tvm.transform.Sequential([*passes, relax.transform.AnnotateTIROpPattern()])(mod), target


def test_one_build_per_prim_func_and_same_result_as_fold_constant(tmp_path, monkeypatch):
    import tvm
    from tvm import relax

    _chain_model(tmp_path / "chain.onnx", layers=6)
    mod, target = _legalized(tmp_path / "chain.onnx")
    built: list[str] = []
    original = fold_call_tir._Builds.get

    def counting_get(self, gvar):
        if gvar.name_hint not in self.cache:
            built.append(gvar.name_hint)
        return original(self, gvar)

    monkeypatch.setattr(fold_call_tir._Builds, "get", counting_get)
    with target.tvm():
        expected = relax.transform.FoldConstant()(mod)
        ours = relax.transform.FoldConstant()(fold_call_tir.fold_call_tir_pass()(mod))
    tvm.ir.assert_structural_equal(ours, expected)
    assert built and len(built) == len(set(built))  # six layers' weights folded with one build per PrimFunc
    assert len(built) < 6


def _constants_across_blocks():
    """Constant calls feeding each other, a constant dataflow output used after its block and returned."""
    import numpy as np
    from tvm import relax

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((4, 16)).astype(np.float32) for _ in range(2))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([4, 16], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            c0 = bb.emit(relax.op.add(relax.const(a), relax.const(b)))
            c1 = bb.emit(relax.op.nn.relu(c0))
            y = bb.emit(relax.op.add(x, c1))
            k = bb.emit_output(relax.op.multiply(c1, c1))
            out = bb.emit_output(y)
        z = bb.emit(relax.op.add(out, k))
        bb.emit_func_output(relax.Tuple([z, k]))
    return relax.transform.LegalizeOps()(bb.get()), a, b


def _left_to_fold(func) -> list:
    """Bindings FoldConstant would still fold or drop: bound to a constant, or a call_tir on constants only."""
    from tvm import relax

    left = []
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            on_constants = isinstance(value, relax.Call) and fold_call_tir._is_call_tir(value.op)
            on_constants = on_constants and all(fold_call_tir._is_constant(arg) for arg in value.args[1].fields)
            if fold_call_tir._is_constant(value) or on_constants:
                left.append(binding)
    return left


def test_folded_constants_are_inlined_so_fold_constant_has_nothing_left_to_remove():
    """FoldConstant's final RemoveAllUnused is quadratic in the variables it removes: the fold leaves none, and
    what FoldConstant then makes of the module is what it makes of the module alone."""
    import numpy as np
    import tvm
    from tvm import relax

    mod, a, b = _constants_across_blocks()
    given = mod["main"]
    ours = fold_call_tir.fold_call_tir_pass()(mod)
    assert mod["main"].same_as(given)  # the module passed in is left as it was
    assert _left_to_fold(ours["main"]) == []
    assert len(ours["main"].body.blocks[0].bindings) == 2  # only the two uses of x stay
    tvm.ir.assert_structural_equal(relax.analysis.remove_all_unused(ours["main"]), ours["main"])
    tvm.ir.assert_structural_equal(relax.transform.FoldConstant()(ours), relax.transform.FoldConstant()(mod))
    vm = relax.VirtualMachine(tvm.compile(ours, target="llvm"), tvm.cpu())
    xs = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    z, k = vm["main"](tvm.runtime.tensor(xs))
    c1 = np.maximum(a + b, 0)
    np.testing.assert_array_equal(k.numpy(), c1 * c1)
    np.testing.assert_array_equal(z.numpy(), xs + c1 + c1 * c1)


def test_chain_leaves_nothing_for_fold_constant_to_remove(tmp_path):
    import tvm
    from tvm import relax

    _chain_model(tmp_path / "chain.onnx", layers=3)
    mod, target = _legalized(tmp_path / "chain.onnx")
    with target.tvm():
        ours = fold_call_tir.fold_call_tir_pass()(mod)
        assert _left_to_fold(ours["main"]) == []
        tvm.ir.assert_structural_equal(relax.analysis.remove_all_unused(ours["main"]), ours["main"])
        tvm.ir.assert_structural_equal(relax.transform.FoldConstant()(ours), ours)
