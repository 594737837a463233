"""Fold inference-mode BatchNormalization into the Conv / ConvTranspose / Gemm that feeds it."""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import RewritePass
from onnxscript.rewriter.rules import common as rules

from bitc.passes.registry import register


@register("fold_batchnorm", phase="cleanup", order=1, exact=True)
class FoldBatchNorm(ir.passes.InPlacePass):
    """Fold BatchNormalization into the preceding Conv/ConvTranspose/Gemm weights and bias.

    W' = W·γ/σ and b' = (b − μ)·γ/σ + β with σ = sqrt(var + ε); applies only where the producer's weights and
    the BN statistics are constants and the producer feeds nothing but the BN.
    """

    RULES = (
        rules.fuse_batchnorm_into_conv_rule,
        rules.fuse_batchnorm_into_conv_transpose_rule,
        rules.fuse_batchnorm_into_gemm_rule,
    )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return RewritePass(list(self.RULES))(model)
