"""Folding all-constant call_tirs builds each PrimFunc once and leaves what TVM's FoldConstant would give."""

from __future__ import annotations

from test_legalize_cache import _chain_model

from bitc.codegen import fold_call_tir


def _legalized(path) -> tuple:
    """The chain as the build sees it just before constant folding, and the target to lower it in."""
    import tvm
    from tvm import relax

    from bitc.codegen import lowbit_kernels, nchwc
    from bitc.codegen.bitc_relax import KernelTarget, cancel_layout_round_trips
    from bitc.codegen.build import _legalize_map
    from bitc.codegen.legalize_cache import cached_legalize_map
    from bitc.codegen.relax_import import to_relax
    from bitc.codegen.target import parse_target
    from bitc.frontend import load_onnx
    from bitc.passes import run_pipeline

    model, _ = run_pipeline(load_onnx(path, None), None, check_exact=False)
    target = parse_target("cpu")
    lookup = lowbit_kernels.lookup_isa(set(target.cpu_features()))
    mod = to_relax(model, "chain", KernelTarget(lanes=target.vector_lanes, lookup=lookup, cores=target.num_cores))
    with target.tvm():
        mod = cancel_layout_round_trips(nchwc.convert_conv_layout(mod, block=target.vector_lanes))
        legalize = relax.transform.LegalizeOps(customize_legalize_map=cached_legalize_map(_legalize_map()))
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
