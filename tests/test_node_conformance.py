"""onnx backend node tests that bitc used to get wrong (exit 0, wrong numbers) now match onnx's expected outputs
or are refused with bitc's own error: never WRONG, never a crash (benchmarks/node_conformance.py runs them all)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "node_conformance.py"
_spec = importlib.util.spec_from_file_location("node_conformance", _SCRIPT)
conformance = importlib.util.module_from_spec(_spec)
sys.modules["node_conformance"] = conformance  # dataclasses look their module up there
_spec.loader.exec_module(conformance)

# Each was WRONG before its lowering in bitc.frontend.onnx_lowering.
FIXED = [
    "test_reduce_log_sum_exp_keepdims_random",  # float64: dlight's GEMV rule asserted; now it declines
    "test_attention_4d_with_qk_matmul",  # a body for some outputs: the unused ones get placeholders
    "test_attention_4d_expanded",  # lowered nodes of unnamed anchors get distinct names
    "test_pow_types_int64_float32",  # mixed-type Pow: exponent cast, integer bases raised in float64
    "test_pow_types_float32_int32",
    "test_rms_normalization_3d_axis0_epsilon",  # leading-axis RMSNormalization from its function body
    "test_l2normalization_axis_0",  # LpNormalization lowered, 0 where the norm is 0
    "test_l1normalization_axis_last",
    "test_rotary_embedding_interleaved",  # context-dependent bodies built from typed, shaped inputs
    "test_causal_conv_with_state_silu",
    "test_sce_mean_weight_ii_log_prob",  # a body calling another context-dependent body (NLLLoss)
    "test_shape_example",  # the folder's Constant(value_ints), now a tensor Constant the importer reads
    "test_size",
    "test_isinf_positive",
    "test_isinf_negative",
    "test_bitshift_right_int32_shift_ge_width",
    "test_bitshift_left_int32_shift_ge_width",
    "test_bitshift_right_int32_negative_shift",
    "test_bitshift_left_int32_negative_shift",
    "test_spacetodepth_crd_mode_example",
    "test_layer_normalization_4d_axis1",
    "test_layer_normalization_2d_axis0",
    "test_mod_float_edge_cases_fmod_0_float32",
    "test_convtranspose_output_shape",
    "test_batchnorm_example_training_mode",
    "test_batchnorm_epsilon_training_mode",
    # a pass renamed the graph output (the artifact answered under another name)
    "test_rotary_embedding_expanded",
    "test_reduce_l2_keep_dims_example_expanded[const]",
    # ops TVM's importer lacks, compiled from the spec's function body
    "test_celu",
    "test_attention_4d_gqa_causal",
    "test_attention_23_boolmask_fullymasked_row_nan_robustness",
    # a float16 conv summed in float16 was 2 ulp off: accumulates in float32 now
    "test_causal_conv_with_state_silu_fp16_expanded",
    # ConvertLayout's stack of 0-d tensors raised SIGFPE
    "test_dynamicquantizelinear_expanded",
    # refused before (TVM's importer lacks them), unrolled cells now: bitc.frontend.recurrent_lowering
    "test_gru_defaults",
    "test_gru_with_initial_bias",
    "test_gru_seq_length",
    "test_gru_batchwise",
    "test_gru_reverse",
    "test_gru_bidirectional",
    "test_lstm_defaults",
    "test_lstm_with_initial_bias",
    "test_lstm_with_peepholes[const]",
    "test_lstm_batchwise",
    "test_lstm_reverse",
    "test_lstm_bidirectional",
    "test_simple_rnn_defaults",
    "test_simple_rnn_with_initial_bias",
    "test_rnn_seq_length",
    "test_simple_rnn_batchwise",
    "test_simple_rnn_reverse",
    "test_simple_rnn_bidirectional",
    # narrow types on carriers (bitc.frontend.narrow_types): casts, quantization, blocked (de)quantization
    "test_cast_FLOAT_to_FLOAT8E4M3FNUZ",
    "test_cast_no_saturate_FLOAT16_to_FLOAT8E5M2",
    "test_castlike_BFLOAT16_to_FLOAT",
    "test_cast_FLOAT_to_UINT2",
    "test_quantizelinear_int4",
    "test_dequantizelinear_float4e2m1",
    "test_quantizelinear_blocked_asymmetric",
    # Scan unrolled (bitc.frontend.control_flow), also inside LinearAttention's function body
    "test_scan9_sum",
    "test_scan_sum",  # Scan-8 kept at opset 8 (the converter would drop its batch axis from the inputs)
    "test_loop11",  # trip count and condition specialised by the backend, then unrolled
    "test_linear_attention_gated_delta",
    # bitc.frontend.tensor_lowering and integer_lowering
    "test_onehot_negative_indices",
    "test_eyelike_with_dtype",
    "test_swish",
    "test_cumprod_1d_reverse_exclusive",
    "test_cumprod_2d_int32",
    "test_bitcast_float32_to_int32",
    "test_bitcast_bool_to_uint8",
    "test_reduce_max_bool_inputs",
    "test_not_2d",  # opset 1, upgraded by onnx's version converter
    "test_convinteger_with_padding",
    "test_qlinearconv",
    "test_qlinearmatmul_3D_int8_float16",
    "test_flexattention_gqa",  # ai.onnx.preview ops from their (context-dependent) function bodies
    "test_attention_4d_gqa_causal_nonpad_decode_fp16",  # float16 softmax came back float32
    "test_celu_float16",  # the importer's Elu adds a float32 constant to float16 data
    "test_dft_rfft",  # DFT as float64 products with cosine and sine matrices
    "test_dft_irfft_opset19",
    "test_col2im_pads",  # a ScatterElements(add) with constant indices
    "test_reduce_max_empty_set_bool",  # an empty boolean reduction is its identity, not a reduction over bytes
]

# Each was WRONG (or a crash) and has no exact lowering: refused at compile time in one line naming the node.
REFUSED = [
    "test_training_dropout",
    "test_training_dropout_zero_ratio",  # ratio and training_mode are run-time inputs: the mask may be random
    "test_if_seq",
    "test_split_to_sequence_2[const]",
    "test_roialign_mode_max",
    "test_sequence_map_add_2_sequences",
    # output shapes that depend on input values: refused at compile time, not when the artifact runs
    "test_expand_dim_changed",
    "test_nonmaxsuppression_two_batches",  # a graph attribute: no function expansion, no importer support
    "test_resize_downsample_scales_linear[const]",
    "test_resize_downsample_scales_cubic_align_corners[const]",
    "test_resize_downsample_sizes_linear_antialias[const]",
    "test_lstm_with_peepholes",  # sequence_lens is a run-time input: which steps count is unknown when compiling
    "test_einsum_batch_matmul_bfloat16",  # float32 would round differently from bfloat16 arithmetic
    "test_flexattention_score_mod",  # a graph attribute: its function body cannot take it
]


@pytest.fixture(scope="module")
def cases() -> dict:
    names = {name.removesuffix("[const]") for name in FIXED + REFUSED}
    pattern = "^(" + "|".join(names) + ")$"
    return {case.name: case for case in conformance.load_cases(pattern)}


@pytest.mark.parametrize("name", FIXED)
def test_node_case_matches_onnx_reference(name: str, cases: dict) -> None:
    outcome = conformance.run_case(cases[name], strict=name.endswith("[const]"))
    assert outcome.status == "PASS", f"{outcome.status}: {outcome.detail}"


@pytest.mark.parametrize("name", REFUSED)
def test_node_case_without_exact_lowering_is_refused(name: str, cases: dict) -> None:
    outcome = conformance.run_case(cases[name], strict=True)
    assert outcome.status == "REFUSED", f"{outcome.status}: {outcome.detail}"
    assert outcome.detail.startswith("compile: ") and "\n" not in outcome.detail


def test_compare_flags_nan_at_other_places() -> None:
    import numpy as np

    expected = [np.array([np.nan, 1.0], np.float32)]
    assert conformance.compare(expected, [np.array([0.0, 1.0], np.float32)], 1e-3, 1e-7)
    assert not conformance.compare(expected, [np.array([np.nan, 1.0], np.float32)], 1e-3, 1e-7)
