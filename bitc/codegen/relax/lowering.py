"""The Relax → TIR lowering steps both targets run: legalize, fold constants, fuse."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bitc.codegen.relax.fold_call_tir import fold_call_tir_pass
from bitc.codegen.relax.legalize_cache import Legalizer, cached_legalize_map

if TYPE_CHECKING:
    import tvm


def legalize_and_fuse(
    legalize_map: dict[str, Legalizer], *, fold_call_tirs: bool, after_fuse_ops: Sequence[tvm.transform.Pass] = ()
) -> list[tvm.transform.Pass]:
    """Decompose and legalize every op to TIR (`legalize_map` over TVM's own, each distinct call once), fold
    constants and fuse operators. `fold_call_tirs` folds the all-constant call_tirs first, one build per PrimFunc;
    `after_fuse_ops` run on the fused groups before they become PrimFuncs."""
    from tvm import relax

    return [
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        # Legalize before folding constants: FoldConstant legalizes every call it visits (with TVM's
        # uncached legalizations) just to see whether it can fold it; after LegalizeOps it only
        # evaluates the call_tirs whose arguments are all constant (pre-blocked weights, folded BN).
        relax.transform.LegalizeOps(customize_legalize_map=cached_legalize_map(legalize_map)),
        relax.transform.AnnotateTIROpPattern(),
        # TVM's FoldConstant rebuilds the PrimFunc for every foldable call (its build cache never hits):
        # fold those first with one build per PrimFunc, so that compile time does not grow ~40 ms a conv
        *([fold_call_tir_pass()] if fold_call_tirs else []),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        *after_fuse_ops,
        relax.transform.FuseTIR(),
    ]
