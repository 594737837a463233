"""Lower ONNX LSTM, GRU and RNN, which TVM's ONNX importer lacks, to their cell equations unrolled over time.

Every time step becomes its own MatMul/Add/activation nodes and every direction its own chain, so the sequence
length must be static. The input projection X·Wᵀ + biases is one MatMul over all steps; each step adds H·Rᵀ.
Forms the unrolled cell cannot reproduce exactly (sequence_lens shorter than the sequence or known only at run
time, activations ONNX and onnxruntime give different defaults) lower to None: the node stays, refused by name.

The rules cover LSTM/GRU/RNN 7, 14 and 22 (14 added `layout`, 22 bfloat16); the opset-1/3 forms with
`output_sequence` predate bitc's oldest opset and any attribute not listed here makes the rule decline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from bitc.ir import graph_edit

if TYPE_CHECKING:
    from bitc.frontend.onnx_lowering import Builder

Lowered = list[ir.Value | None] | None

# Gate blocks in W/R/B (LSTM: i, o, f, c; GRU: z, r, h; RNN: i) and the default activations of one direction.
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
COMMON_ATTRIBUTES = {"activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size", "layout"}
DIRECTIONS = {"forward": ["forward"], "reverse": ["reverse"], "bidirectional": ["forward", "reverse"]}
EXTRA_ATTRIBUTES = {"LSTM": {"input_forget"}, "GRU": {"linear_before_reset"}, "RNN": set()}

# Activation (lower case) -> (takes alpha, takes beta, default (alpha, beta)). The defaults are the ONNX ops'
# (onnxruntime uses the same); None where they disagree (onnxruntime: 0), so such an activation needs explicit values.
ACTIVATION_PARAMETERS: dict[str, tuple[bool, bool, tuple[float, float] | None]] = {
    "relu": (False, False, (0.0, 0.0)),
    "tanh": (False, False, (0.0, 0.0)),
    "sigmoid": (False, False, (0.0, 0.0)),
    "softsign": (False, False, (0.0, 0.0)),
    "softplus": (False, False, (0.0, 0.0)),
    "leakyrelu": (True, False, (0.01, 0.0)),
    "hardsigmoid": (True, True, (0.2, 0.5)),
    "elu": (True, False, (1.0, 0.0)),
    "thresholdedrelu": (True, False, None),
    "affine": (True, True, None),
    "scaledtanh": (True, True, None),
}


@dataclass(frozen=True)
class Activation:
    name: str  # lower case, a key of ACTIVATION_PARAMETERS
    alpha: float = 0.0
    beta: float = 0.0


@dataclass
class Recurrence:
    """What the node's attributes and shapes say, checked: everything the unrolled cell needs."""

    op: str
    steps: int
    hidden: int
    directions: list[str]  # "forward" / "reverse", in the order of the num_directions axis
    activations: list[list[Activation]]  # per direction
    clip: float | None
    layout: int
    input_forget: bool
    linear_before_reset: bool


@dataclass
class Emitter:
    """The builder plus cached constants and the op forms that changed across opsets (Slice, Unsqueeze)."""

    b: Builder
    dtype: np.dtype
    cache: dict[tuple, ir.Value] = field(default_factory=dict)

    def op(self, op_type: str, *inputs: ir.Value | None, **attributes: Any) -> ir.Value:
        return self.b.op(op_type, *inputs, **attributes)

    def const(self, array: Any, dtype: Any = None) -> ir.Value:
        array = np.asarray(array, dtype=dtype or self.dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.cache:
            self.cache[key] = self.b.const(array)
        return self.cache[key]

    def index(self, x: ir.Value, position: int, axis: int) -> ir.Value:
        """x's slice at `position` along `axis`, that axis dropped (a static Slice: no bounds check needed)."""
        return self.squeeze(self.slice(x, axis, position, position + 1), [axis])

    def slice(self, x: ir.Value, axis: int, start: int, stop: int) -> ir.Value:
        if self.b.opset >= 10:
            ints = [self.const([v], np.int64) for v in (start, stop, axis)]
            return self.op("Slice", x, *ints)
        return self.op("Slice", x, starts=[start], ends=[stop], axes=[axis])

    def squeeze(self, x: ir.Value, axes: list[int]) -> ir.Value:
        if self.b.opset >= 13:
            return self.op("Squeeze", x, self.const(axes, np.int64))
        return self.op("Squeeze", x, axes=axes)

    def unsqueeze(self, x: ir.Value, axes: list[int]) -> ir.Value:
        if self.b.opset >= 13:
            return self.op("Unsqueeze", x, self.const(axes, np.int64))
        return self.op("Unsqueeze", x, axes=axes)

    def concat(self, values: list[ir.Value], axis: int) -> ir.Value:
        return self.op("Concat", *values, axis=axis)

    def add(self, x: ir.Value, y: ir.Value | None) -> ir.Value:
        """x + y, where a missing y (a zero initial state's contribution, an absent bias) adds nothing."""
        return x if y is None else self.op("Add", x, y)

    def matmul(self, x: ir.Value | None, weight_t: ir.Value) -> ir.Value | None:
        return None if x is None else self.op("MatMul", x, weight_t)

    def activate(self, activation: Activation, x: ir.Value, clip: float | None) -> ir.Value:
        """The activation of x, clipped to [-clip, clip] first when the node has a clip."""
        if clip is not None:
            x = self.op("Max", self.op("Min", x, self.const(clip)), self.const(-clip))
        return _ACTIVATIONS[activation.name](self, x, activation)


_ACTIVATIONS: dict[str, Callable[[Emitter, ir.Value, Activation], ir.Value]] = {
    "relu": lambda e, x, a: e.op("Relu", x),
    "tanh": lambda e, x, a: e.op("Tanh", x),
    "sigmoid": lambda e, x, a: e.op("Sigmoid", x),
    "softsign": lambda e, x, a: e.op("Softsign", x),
    "softplus": lambda e, x, a: e.op("Softplus", x),
    "leakyrelu": lambda e, x, a: e.op("LeakyRelu", x, alpha=a.alpha),
    "hardsigmoid": lambda e, x, a: e.op("HardSigmoid", x, alpha=a.alpha, beta=a.beta),
    "elu": lambda e, x, a: e.op("Elu", x, alpha=a.alpha),
    "thresholdedrelu": lambda e, x, a: e.op("ThresholdedRelu", x, alpha=a.alpha),
    "affine": lambda e, x, a: e.op("Add", e.op("Mul", x, e.const(a.alpha)), e.const(a.beta)),
    "scaledtanh": lambda e, x, a: e.op("Mul", e.const(a.alpha), e.op("Tanh", e.op("Mul", x, e.const(a.beta)))),
}


# --- reading the node ---


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


def _dims(value: ir.Value | None, rank: int) -> list[int | None] | None:
    """value's dimensions (None where symbolic) if it has this rank, else None."""
    if value is None or value.shape is None or len(value.shape) != rank:
        return None
    return [int(d) if isinstance(d, int) else None for d in value.shape]


def _parse_activations(node: ir.Node, op: str, directions: int) -> list[list[Activation]] | None:
    """The activations per direction with their alpha/beta, consumed in list order by the activations that take
    them (as onnxruntime does); None for an unknown name, a list of the wrong length or values left over."""
    per_direction = len(DEFAULT_ACTIVATIONS[op])
    names = [str(n) for n in node.attributes.get_strings("activations", [])]
    if not names:
        names = list(DEFAULT_ACTIVATIONS[op]) * directions
    if len(names) != per_direction * directions:
        return None
    alphas = list(node.attributes.get_floats("activation_alpha", []))
    betas = list(node.attributes.get_floats("activation_beta", []))
    parsed = []
    for name in names:
        parameters = ACTIVATION_PARAMETERS.get(name.lower())
        if parameters is None:
            return None
        takes_alpha, takes_beta, defaults = parameters
        missing = (takes_alpha and not alphas) or (takes_beta and not betas)
        if missing and defaults is None:
            return None
        alpha = alphas.pop(0) if takes_alpha and alphas else defaults[0] if defaults else 0.0
        beta = betas.pop(0) if takes_beta and betas else defaults[1] if defaults else 0.0
        parsed.append(Activation(name.lower(), float(alpha), float(beta)))
    if alphas or betas:
        return None
    return [parsed[d * per_direction : (d + 1) * per_direction] for d in range(directions)]


def _full_length(node: ir.Node, steps: int) -> bool:
    """sequence_lens absent, or a constant giving every batch entry the whole sequence (then it changes nothing)."""
    lens = _input(node, 4)
    if lens is None:
        return True
    value = graph_edit.constant(lens)
    return value is not None and value.size > 0 and bool(np.all(value == steps))


def parse(node: ir.Node) -> Recurrence | None:
    """The node's checked description, or None for a form the unrolled cell does not reproduce exactly."""
    op = node.op_type
    if set(node.attributes) - COMMON_ATTRIBUTES - EXTRA_ATTRIBUTES[op]:
        return None
    x, w, r = _input(node, 0), _input(node, 1), _input(node, 2)
    layout = node.attributes.get_int("layout", 0)
    direction = node.attributes.get_string("direction", "forward")
    x_dims, r_dims = _dims(x, 3), _dims(r, 3)
    if x_dims is None or r_dims is None or w is None or layout not in (0, 1) or x.dtype is None:
        return None
    if not x.dtype.is_floating_point():
        return None
    steps = x_dims[layout]
    hidden = node.attributes.get_int("hidden_size", r_dims[2] or 0)
    directions = DIRECTIONS.get(direction)
    if not steps or hidden <= 0 or directions is None or r_dims[2] not in (None, hidden):
        return None
    if r_dims[0] not in (None, len(directions)) or r_dims[1] not in (None, GATES[op] * hidden):
        return None
    if not _full_length(node, steps) or len(node.outputs) > (3 if op == "LSTM" else 2):
        return None
    activations = _parse_activations(node, op, len(directions))
    clip = node.attributes.get_float("clip", None) if "clip" in node.attributes else None
    input_forget = node.attributes.get_int("input_forget", 0)
    linear_before_reset = node.attributes.get_int("linear_before_reset", 0)
    if activations is None or (clip is not None and not clip > 0) or input_forget not in (0, 1):
        return None
    return Recurrence(
        op, steps, hidden, directions, activations, clip, layout, bool(input_forget), bool(linear_before_reset)
    )


# --- the unrolled cells ---


@dataclass
class Weights:
    """One direction's operands: X·Wᵀ + biases for all steps [T, N, gates·H], Rᵀ blocks, peepholes, GRU's Rbh."""

    projected: ir.Value
    recurrence_t: ir.Value  # LSTM/RNN: all gates' Rᵀ [H, g·H]; GRU: z and r only [H, 2H]
    candidate_t: ir.Value | None = None  # GRU: Rhᵀ [H, H]
    candidate_bias: ir.Value | None = None  # GRU with linear_before_reset: Rbh, applied inside r·(...)
    peepholes: list[ir.Value] | None = None  # LSTM: Pi, Po, Pf [H]


def _weights(e: Emitter, spec: Recurrence, node: ir.Node, x_steps: ir.Value, d: int) -> Weights:
    """Direction d's weights, with the bias blocks the cell adds outside any product folded into the projection."""
    h, gates = spec.hidden, GATES[spec.op] * spec.hidden
    w_t = e.op("Transpose", e.index(node.inputs[1], d, 0), perm=[1, 0])
    r = e.index(node.inputs[2], d, 0)
    projected = e.op("MatMul", x_steps, w_t)
    split_candidate = spec.op == "GRU"
    weights = Weights(projected, e.op("Transpose", e.slice(r, 0, 0, 2 * h) if split_candidate else r, perm=[1, 0]))
    if split_candidate:
        weights.candidate_t = e.op("Transpose", e.slice(r, 0, 2 * h, 3 * h), perm=[1, 0])
    bias = _input(node, 3)
    if bias is not None:
        both = e.index(bias, d, 0)
        recurrent = e.slice(both, 0, gates, 2 * gates)
        if split_candidate and spec.linear_before_reset:
            weights.candidate_bias = e.slice(recurrent, 0, 2 * h, 3 * h)
            recurrent = e.op("Mul", recurrent, e.const(np.repeat([1, 1, 0], h)))
        weights.projected = e.op("Add", projected, e.op("Add", e.slice(both, 0, 0, gates), recurrent))
    peepholes = _input(node, 7)
    if spec.op == "LSTM" and peepholes is not None:
        p = e.index(peepholes, d, 0)
        weights.peepholes = [e.slice(p, 0, k * h, (k + 1) * h) for k in range(3)]
    return weights


State = tuple[ir.Value | None, ir.Value | None]  # H and (LSTM) C; None: zeros, whose products the cell skips


def _lstm_step(e: Emitter, spec: Recurrence, w: Weights, acts: list[Activation], xw: ir.Value, state: State) -> State:
    """One LSTM step: gates i, o, f, c from X·Wᵀ + H·Rᵀ + B (+ peepholes), then Ct and Ht."""
    f, g, act_h = acts
    h, c = state
    n = spec.hidden
    gates = e.add(xw, e.matmul(h, w.recurrence_t))
    i_pre, o_pre, f_pre, c_pre = (e.slice(gates, 1, k * n, (k + 1) * n) for k in range(4))
    p_i, p_o, p_f = w.peepholes or (None, None, None)
    if c is not None and p_i is not None:
        i_pre, f_pre = e.op("Add", i_pre, e.op("Mul", p_i, c)), e.op("Add", f_pre, e.op("Mul", p_f, c))
    i = e.activate(f, i_pre, spec.clip)
    candidate = e.op("Mul", i, e.activate(g, c_pre, spec.clip))
    if c is None:
        c_new = candidate
    else:
        forget = e.op("Sub", e.const(1), i) if spec.input_forget else e.activate(f, f_pre, spec.clip)
        c_new = e.op("Add", e.op("Mul", forget, c), candidate)
    if p_o is not None:
        o_pre = e.op("Add", o_pre, e.op("Mul", p_o, c_new))
    o = e.activate(f, o_pre, spec.clip)
    # h(Ct) is not clipped: clip bounds the gates' inputs (onnxruntime likewise)
    return e.op("Mul", o, e.activate(act_h, c_new, None)), c_new


def _gru_step(
    e: Emitter, spec: Recurrence, w: Weights, acts: list[Activation], xw: ir.Value, h: ir.Value | None
) -> ir.Value:
    """One GRU step: z, r, then the candidate with r applied before (default) or after Rh (linear_before_reset)."""
    f, g = acts
    n = spec.hidden
    zr = e.add(e.slice(xw, 1, 0, 2 * n), e.matmul(h, w.recurrence_t))
    z = e.activate(f, e.slice(zr, 1, 0, n), spec.clip)
    r = e.activate(f, e.slice(zr, 1, n, 2 * n), spec.clip)
    xw_h = e.slice(xw, 1, 2 * n, 3 * n)
    if spec.linear_before_reset:
        hr = e.add(w.candidate_bias, e.matmul(h, w.candidate_t)) if h is not None else w.candidate_bias
        pre = xw_h if hr is None else e.op("Add", xw_h, e.op("Mul", r, hr))
    else:
        pre = e.add(xw_h, None if h is None else e.matmul(e.op("Mul", r, h), w.candidate_t))
    candidate = e.activate(g, pre, spec.clip)
    kept = e.op("Mul", e.op("Sub", e.const(1), z), candidate)
    return kept if h is None else e.op("Add", kept, e.op("Mul", z, h))


def _rnn_step(
    e: Emitter, spec: Recurrence, w: Weights, acts: list[Activation], xw: ir.Value, h: ir.Value | None
) -> ir.Value:
    """One RNN step: f(X·Wᵀ + H·Rᵀ + B)."""
    return e.activate(acts[0], e.add(xw, e.matmul(h, w.recurrence_t)), spec.clip)


def _initial(e: Emitter, spec: Recurrence, value: ir.Value | None, d: int) -> ir.Value | None:
    """Direction d's initial state [N, H] (None: zeros, whose products the cell skips)."""
    return None if value is None else e.index(value, d, spec.layout)


def _run_direction(
    e: Emitter, spec: Recurrence, node: ir.Node, x_steps: ir.Value, d: int
) -> tuple[list[ir.Value], ir.Value | None]:
    """Unroll direction d: its hidden states in time order (not processing order) and its last cell state."""
    w = _weights(e, spec, node, x_steps, d)
    acts = spec.activations[d]
    h, c = _initial(e, spec, _input(node, 5), d), _initial(e, spec, _input(node, 6), d)
    order = range(spec.steps) if spec.directions[d] == "forward" else range(spec.steps - 1, -1, -1)
    states: dict[int, ir.Value] = {}
    for t in order:
        xw = e.index(w.projected, t, 0)
        if spec.op == "LSTM":
            h, c = _lstm_step(e, spec, w, acts, xw, (h, c))
        elif spec.op == "GRU":
            h = _gru_step(e, spec, w, acts, xw, h)
        else:
            h = _rnn_step(e, spec, w, acts, xw, h)
        states[t] = h
    return [states[t] for t in range(spec.steps)], c


def _used(value: ir.Value, graph: ir.Graph | None) -> bool:
    return bool(value.uses()) or (graph is not None and any(out is value for out in graph.outputs))


def lower_recurrent(b: Builder, node: ir.Node) -> Lowered:
    """LSTM/GRU/RNN as unrolled cells; Y [T, D, N, H], Y_h and Y_c [D, N, H] (layout 1: batch first)."""
    spec = parse(node)
    if spec is None:
        return None
    e = Emitter(b, node.inputs[0].dtype.numpy())
    x = node.inputs[0]
    x_steps = e.op("Transpose", x, perm=[1, 0, 2]) if spec.layout else x
    runs = [_run_direction(e, spec, node, x_steps, d) for d in range(len(spec.directions))]
    outputs: list[ir.Value | None] = [None] * len(node.outputs)
    if _used(node.outputs[0], node.graph):
        per_direction = [e.unsqueeze(e.concat([e.unsqueeze(h, [0]) for h in states], 0), [1]) for states, _ in runs]
        y = e.concat(per_direction, 1)
        outputs[0] = e.op("Transpose", y, perm=[2, 0, 1, 3]) if spec.layout else y
    finals = [[states[-1 if spec.directions[d] == "forward" else 0] for d, (states, _) in enumerate(runs)]]
    if spec.op == "LSTM":
        finals.append([c for _, c in runs])
    for index, states in enumerate(finals, start=1):
        if index < len(node.outputs) and _used(node.outputs[index], node.graph):
            stacked = e.concat([e.unsqueeze(s, [0]) for s in states], 0)
            outputs[index] = e.op("Transpose", stacked, perm=[1, 0, 2]) if spec.layout else stacked
    return outputs


# The lowering per op type; onnx_lowering registers each as a rule.
RECURRENT_LOWERINGS: dict[str, Callable[[Builder, ir.Node], Lowered]] = {op: lower_recurrent for op in GATES}
