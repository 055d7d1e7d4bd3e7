"""Per-feature attributions for predictive models: exact for ``linear``, integrated gradients otherwise.

What is explained: for each row i, one output column ``target[i]`` - by
default the row's argmax of ``predict(x)`` (the predicted class for ``mlp``;
the only output for ``linear``).  For ``mlp`` that output is the predicted
class's *probability* (what ``predict`` returns), not a logit.

Baseline: the all-zeros input unless the caller passes one (shape ``[d]``).
Attributions then satisfy *completeness*: ``attributions[i].sum()`` equals
``f(x[i]) - f(baseline)`` for the explained output ``f``.

Methods:

- ``linear`` (:class:`~wsserve.models.linear.LinearModel`): exact,
  ``attributions = weight * (x - baseline)``; completeness holds up to float
  rounding (a few ulps).
- ``mlp`` (:class:`~wsserve.models.mlp.MLPModel`) and any model with the
  optional :class:`SupportsInputGradient` method: integrated gradients,
  ``(x - b) * mean_k grad f(b + a_k (x - b))`` with the midpoint rule,
  ``a_k = (k + 1/2) / steps``, ``steps`` = :data:`DEFAULT_STEPS` (128).  The
  gradient is a numpy backward pass in float64
  (:func:`wsserve.models.mlp_gradient.probability_input_gradient`), all
  rows x steps of a batch stacked into large matrix products of a fixed
  :data:`CHUNK_POINTS` = 1024 interpolation points (8 rows at 128 steps; a
  batch that is not a multiple of 8 rows pays for the padding).  A ReLU network's gradient jumps
  at kinks along the path, so the quadrature error shrinks like 1/steps: on
  the 4000 held-out ``mlp`` rows with 128 steps the largest
  ``|sum - (f(x) - f(b))|`` measured 0.0047 (probability units); the stated
  bound is :data:`COMPLETENESS_TOLERANCE` = 0.01 for inputs from the ``mlp``
  data distribution.  Every :class:`Explanation` carries its rows' actual
  ``completeness_gap``.  Cost on one core (benchmarks/results/compress.md):
  1.1-1.6 ms per row in a batch of 256 (128 forward+backward passes), 9-13 ms
  for a single row (padded to the fixed 8-row chunk).
- anything else is refused: :func:`explain_refusal` says why, and
  :func:`explain` raises :class:`NotExplainable` with that reason.

Serving (:func:`explainer_for`): the pool resolves, once per served version,
an :class:`Explainer` - the model to explain (a served wrapper may name its
inner model with an ``explain_model()`` method, e.g. the repository's npz and
model.py backends; returning None means "not explainable"), the method and
the step count - or the refusal text that names the served model.

Batching invariance: a row's attributions do not depend on the other rows of
the batch - bit for bit (the tests check it), because the per-row work is
elementwise, every gradient call has the same shape (see
:func:`integrated_gradients`) and the step sum runs in the same order
whatever the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from .models.base import PredictiveModel
from .models.linear import LinearModel
from .models.mlp import MLPModel
from .models.mlp_gradient import gradient_plan, probability_input_gradient

__all__ = [
    "DEFAULT_STEPS",
    "MAX_STEPS",
    "CHUNK_POINTS",
    "COMPLETENESS_TOLERANCE",
    "SupportsInputGradient",
    "Explanation",
    "NotExplainable",
    "explain_refusal",
    "explain",
    "integrated_gradients",
    "Explainer",
    "explainer_for",
    "ATTRIBUTIONS_SUFFIX",
    "DEFAULT_OUTPUT",
    "tensor_names",
]

DEFAULT_STEPS = 128
MAX_STEPS = 4096
#: Interpolation points per gradient call, fixed (bounds memory: 2 MB per 256-wide layer in float64).
CHUNK_POINTS = 1024
#: Stated completeness bound for ``mlp`` with DEFAULT_STEPS on its data distribution.
COMPLETENESS_TOLERANCE = 0.01

#: An output's attributions tensor is named ``<output>`` + this (binary WebSocket frames and the OIP).
ATTRIBUTIONS_SUFFIX = "_attributions"
#: The name of the one output of a model that declares no tensor specs (the built-in models).
DEFAULT_OUTPUT = "output"

GradientFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def tensor_names(model: object) -> tuple[str, str]:
    """``(output, attributions)``: the names of an explained model's output tensor and of its
    attributions tensor.  The output's declared name when the model declares input and output
    tensor specs (a repository model), else :data:`DEFAULT_OUTPUT`; the attributions are
    ``<output>`` + :data:`ATTRIBUTIONS_SUFFIX`.  One rule for the WebSocket's binary tensor frames
    and the Open Inference Protocol (:func:`wsserve.rest.oip.signature` names outputs the same way)."""
    specs_in, specs_out = getattr(model, "inputs", None), getattr(model, "outputs", None)
    name = specs_out[0].name if specs_in is not None and specs_out else DEFAULT_OUTPUT
    return name, name + ATTRIBUTIONS_SUFFIX


@runtime_checkable
class SupportsInputGradient(Protocol):
    """Optional model method that makes a model explainable by integrated gradients.

    ``input_gradient(x [n, d] float64, target [n] int64) -> [n, d] float64``:
    row i is the gradient of ``predict(x)[i, target[i]]`` with respect to
    ``x[i]``.  It must be row-pure (row i depends only on ``x[i]`` and
    ``target[i]``) and thread-safe; ``target`` is already range-checked.
    """

    def input_gradient(self, x: np.ndarray, target: np.ndarray) -> np.ndarray: ...


class NotExplainable(ValueError):
    """The model cannot be explained; ``reason`` says why (it names the model)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Explanation:
    """Attributions for a batch, with the outputs computed in the same call.

    ``outputs [n, C]`` = ``predict(x)``; ``target [n]`` the explained column;
    ``attributions [n, d]``; ``baseline [d]``; ``baseline_output [n]`` =
    ``f(baseline)`` for each row's target; ``completeness_gap [n]`` =
    ``attributions.sum(1) - (outputs[i, target[i]] - baseline_output)``;
    ``steps`` 0 for the exact method.
    """

    method: Literal["linear-exact", "integrated-gradients"]
    outputs: np.ndarray
    target: np.ndarray
    attributions: np.ndarray
    baseline: np.ndarray
    baseline_output: np.ndarray
    completeness_gap: np.ndarray
    steps: int


def _model_label(model: object) -> str:
    info = getattr(model, "info", None)
    name = getattr(info, "name", None)
    return f"model {name!r}" if name else f"a {type(model).__name__}"


def explain_refusal(model: object, *, label: str | None = None) -> str | None:
    """``None`` if :func:`explain` can explain ``model``, else the reason, naming the model
    (as ``label`` if given, else by its ``info.name``)."""
    if isinstance(model, (LinearModel, MLPModel)):
        return None
    who = label or _model_label(model)
    if not isinstance(model, PredictiveModel):
        return f"{who} is not a predictive model; explanations need a predict model"
    if len(model.info.input_shape) != 1:
        return f"{who} takes inputs of shape {list(model.info.input_shape)}; " \
               "explanations need flat [n, d] inputs"
    if len(model.info.output_shape) != 1:
        return f"{who} gives outputs of shape {list(model.info.output_shape)}; " \
               "explanations need flat [n, k] outputs"
    if callable(getattr(model, "input_gradient", None)):
        return None
    return (f"{who} cannot be explained: it is not linear or mlp and provides "
            "no input_gradient(x, target)")


def _gradient_fn(model: PredictiveModel) -> GradientFn:
    if isinstance(model, MLPModel):
        params = [(w.astype(np.float64), b.astype(np.float64)) for w, b in model.params]
        plan = gradient_plan(params)
        return lambda x, t: probability_input_gradient(params, x, t, plan)[0]
    return model.input_gradient  # type: ignore[attr-defined, no-any-return]


def integrated_gradients(grad_fn: GradientFn, x: np.ndarray, baseline: np.ndarray, target: np.ndarray,
                         *, steps: int = DEFAULT_STEPS) -> np.ndarray:
    """``[n, d]`` integrated gradients of ``f_target`` from ``baseline [d]`` to each row of ``x``.

    Midpoint rule with ``steps`` points; ``grad_fn(points [m, d], target [m])
    -> [m, d]``.  Every ``grad_fn`` call gets the same number of points,
    ``max(1, CHUNK_POINTS // steps) * steps`` (a short last chunk is padded
    with copies of its last row), so BLAS runs one kernel for one shape
    whatever the batch: a row's result is then bitwise independent of the
    other rows (OpenBLAS picks different "small matrix" kernels, with a
    different summation order, for small products).
    """
    n, d = x.shape
    alphas = (np.arange(steps, dtype=np.float64) + 0.5) / steps        # [m]
    diff = x - baseline                                                 # [n, d]
    out = np.empty((n, d), dtype=np.float64)
    rows = max(1, CHUNK_POINTS // steps)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        take = np.minimum(np.arange(lo, lo + rows), hi - 1)             # [rows], padded with the last row
        pts = baseline + alphas[None, :, None] * diff[take, None, :]    # [rows, m, d]
        grads = grad_fn(pts.reshape(-1, d), np.repeat(target[take], steps))  # [rows*m, d]
        grads = np.asarray(grads, dtype=np.float64).reshape(rows, steps, d)[: hi - lo]
        out[lo:hi] = grads.sum(axis=1) / steps * diff[lo:hi]
    return out


def explain(
    model: PredictiveModel,
    x: np.ndarray,
    *,
    target: np.ndarray | None = None,
    baseline: np.ndarray | None = None,
    steps: int = DEFAULT_STEPS,
) -> Explanation:
    """Explain ``model`` on ``x [n, d]`` (see the module docstring).

    Raises :class:`NotExplainable` (a ``ValueError``) if the model cannot be
    explained, ``ValueError`` on a bad ``x`` shape, non-finite values, a
    ``target`` not ``[n]`` integers in ``0..C-1``, a ``baseline`` not ``[d]``
    finite, or ``steps`` outside ``1..MAX_STEPS``.  Model errors propagate.
    """
    reason = explain_refusal(model)
    if reason is not None:
        raise NotExplainable(reason)
    d = int(np.prod(model.info.input_shape))
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"{_model_label(model)} expects inputs of shape [n, {d}], got {list(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError("inputs must be finite")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an integer in 1..{MAX_STEPS}, got {steps!r}")
    b = np.zeros(d) if baseline is None else np.asarray(baseline, dtype=np.float64)
    if b.shape != (d,) or not np.isfinite(b).all():
        raise ValueError(f"baseline must be {d} finite numbers, got shape {list(b.shape)}")
    n = len(x)
    outputs = model.predict(x)                                          # [n, C]
    base_out = model.predict(np.stack([b, b]))[0]                       # [C] (two rows: gemm path)
    n_out = outputs.shape[1]
    if target is None:
        t = outputs.argmax(axis=1).astype(np.int64)
    else:
        t = np.asarray(target)
        if t.shape != (n,) or t.dtype.kind not in "iu" or (n and (t.min() < 0 or t.max() >= n_out)):
            raise ValueError(f"target must be {n} integers in 0..{n_out - 1}")
        t = t.astype(np.int64)

    if isinstance(model, LinearModel):
        attributions = (x - b) * model.weight                           # [n, 1], exact
        method: Literal["linear-exact", "integrated-gradients"] = "linear-exact"
        used_steps = 0
    else:
        attributions = integrated_gradients(_gradient_fn(model), x, b, t, steps=int(steps))
        method, used_steps = "integrated-gradients", int(steps)
    rows = np.arange(n)
    gap = attributions.sum(axis=1) - (outputs[rows, t] - base_out[t])
    return Explanation(method=method, outputs=outputs, target=t, attributions=attributions,
                       baseline=b, baseline_output=base_out[t], completeness_gap=gap, steps=used_steps)


@dataclass(frozen=True, slots=True)
class Explainer:
    """How one served model version is explained (made by :func:`explainer_for`).

    ``model``: what :func:`explain` runs on; ``method`` and ``steps`` as in
    :class:`Explanation`; ``input_dtype``: the dtype the served model reads
    its rows in (rows are rounded to it first, so the attributions explain
    exactly the row the model computed on).  Thread-safe.
    """

    model: PredictiveModel
    method: Literal["linear-exact", "integrated-gradients"]
    steps: int
    input_dtype: np.dtype

    def attributions(self, x: np.ndarray) -> np.ndarray:
        """``[n, d]`` attributions of each row's argmax output from the zeros baseline (float64).

        Row i depends only on ``x[i]`` (bit for bit).  Raises what :func:`explain` raises.
        """
        rows = np.asarray(x).astype(self.input_dtype).astype(np.float64)
        return explain(self.model, rows, steps=self.steps if self.steps else DEFAULT_STEPS).attributions

    def describe(self) -> dict[str, object]:
        """The JSON description a reply carries: method, baseline, target and steps."""
        return {"method": self.method, "baseline": "zeros", "target": "argmax", "steps": self.steps}


def explainer_for(model: object, *, label: str, input_dtype: object = np.float64) -> Explainer:
    """The :class:`Explainer` of a served model, or :class:`NotExplainable` whose reason starts with ``label``.

    ``model`` is explained itself, or - if it has a callable ``explain_model()``
    (a serving wrapper) - what that returns (None: not explainable).
    """
    inputs, outputs = getattr(model, "inputs", None), getattr(model, "outputs", None)
    if inputs is not None and (len(inputs) != 1 or getattr(inputs[0], "dtype", None) not in ("float32", "float64")):
        raise NotExplainable(f"{label} cannot be explained: explanations need one float input, it takes "
                             + ", ".join(f"{getattr(i, 'name', '?')} ({getattr(i, 'dtype', '?')})" for i in inputs))
    if outputs is not None and len(outputs) != 1:
        raise NotExplainable(f"{label} cannot be explained: explanations need one output, it gives {len(outputs)}")
    hook = getattr(model, "explain_model", None)
    if callable(hook):
        inner = hook()
        if inner is None:
            backend = getattr(model, "backend", None)
            via = f"its {backend} backend" if backend else "it"
            raise NotExplainable(
                f"{label} cannot be explained: {via} provides no input gradient (explanations: linear, mlp and "
                "its int8/sparse versions, and model.py models that define input_gradient(x, target))")
    else:
        inner = model
    reason = explain_refusal(inner, label=label)
    if reason is not None:
        raise NotExplainable(reason)
    assert isinstance(inner, PredictiveModel)
    if isinstance(inner, LinearModel):
        return Explainer(inner, "linear-exact", 0, np.dtype(input_dtype))  # type: ignore[arg-type]
    return Explainer(inner, "integrated-gradients", DEFAULT_STEPS, np.dtype(input_dtype))  # type: ignore[arg-type]
