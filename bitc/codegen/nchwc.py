"""Blocked channel layout (NCHW16c) for float convolutions on AVX-512 CPUs.

With 16 channels innermost, a conv's inner loop is one 512-bit FMA per input channel and tap; ConvertLayout
propagates the layout through elementwise ops so transforms only appear at the model's boundaries, and
FoldConstant pre-blocks the weights at compile time. TVM has no legalization for conv2d in a blocked layout,
so this module provides the TE compute (regular and depthwise).
"""

from __future__ import annotations

from typing import Any

BLOCK = 16


def convert_conv_layout(mod: Any, block: int = BLOCK) -> Any:
    """conv2d NCHW/OIHW → NCHW{b}c/OIHW{b}i{b}o (TVM skips grouped convs and channel counts not divisible by b)."""
    from tvm import relax

    return relax.transform.ConvertLayout({"relax.nn.conv2d": [f"NCHW{block}c", f"OIHW{block}i{block}o"]})(mod)


def legalize_conv2d(bb: Any, call: Any) -> Any:
    """LegalizeOps hook for relax.nn.conv2d: blocked layouts get our TE compute, plain NCHW TVM's own."""
    import tvm

    attrs = call.attrs
    if attrs.data_layout == "NCHW" and attrs.kernel_layout == "OIHW":
        return tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")(bb, call)
    out_dtype = str(attrs.out_dtype) if attrs.out_dtype else str(call.args[0].ty.dtype)
    return bb.call_te(
        conv2d_nchwc,
        call.args[0],
        call.args[1],
        attrs.strides,
        attrs.padding,
        attrs.dilation,
        int(attrs.groups),
        out_dtype or "float32",
        primfunc_name_hint="conv2d_nchwc",
    )


def conv2d_nchwc(data: Any, kernel: Any, strides: Any, padding: Any, dilation: Any, groups: int, out_dtype: str) -> Any:
    """data (N, C/b, H, W, b) ⊛ kernel (O/b, I/b, KH, KW, b, b) → (N, O/b, OH, OW, b); depthwise when groups > 1."""
    from tvm import te, topi

    _, in_blocks, height, width, _ = (int(x) for x in data.shape)
    out_blocks, _, kh_size, kw_size, _, out_lanes = (int(x) for x in kernel.shape)
    pad_top, pad_left, pad_bottom, pad_right = (int(p) for p in padding)
    stride_h, stride_w = (int(s) for s in strides)
    dil_h, dil_w = (int(d) for d in dilation)
    out_h = (height + pad_top + pad_bottom - (kh_size - 1) * dil_h - 1) // stride_h + 1
    out_w = (width + pad_left + pad_right - (kw_size - 1) * dil_w - 1) // stride_w + 1
    if pad_top or pad_left or pad_bottom or pad_right:
        data = topi.nn.pad(data, [0, 0, pad_top, pad_left, 0], [0, 0, pad_bottom, pad_right, 0], name="data_pad")
    kh = te.reduce_axis((0, kh_size), "kh")
    kw = te.reduce_axis((0, kw_size), "kw")
    shape = (int(data.shape[0]), out_blocks, out_h, out_w, out_lanes)
    if groups == 1:
        ico = te.reduce_axis((0, in_blocks), "ico")
        ici = te.reduce_axis((0, int(data.shape[4])), "ici")
        return te.compute(
            shape,
            lambda n, oc, oh, ow, oci: te.sum(
                data[n, ico, oh * stride_h + kh * dil_h, ow * stride_w + kw * dil_w, ici].astype(out_dtype)
                * kernel[oc, ico, kh, kw, ici, oci].astype(out_dtype),
                axis=[ico, kh, kw, ici],
            ),
            name="conv2d_NCHWc",
        )
    return te.compute(
        shape,
        lambda n, oc, oh, ow, oci: te.sum(
            data[n, oc, oh * stride_h + kh * dil_h, ow * stride_w + kw * dil_w, oci].astype(out_dtype)
            * kernel[oc, 0, kh, kw, 0, oci].astype(out_dtype),
            axis=[kh, kw],
        ),
        name="dwconv2d_NCHWc",
    )
