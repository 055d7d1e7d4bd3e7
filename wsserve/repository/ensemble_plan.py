"""Plan an ensemble's steps as a DAG, checked against its step models' signatures.

Sans-I/O and pure: :func:`plan_ensemble` takes an :class:`~.ensemble_config.EnsembleConfig`
and the signatures of the models its steps name (:class:`StepSignature`, or the reason a
model cannot serve) and returns an :class:`EnsemblePlan`, or raises :class:`EnsembleError`
naming the ensemble, the step and the tensor.  The checks are Triton's
(``core/src/ensemble_utils.cc``): every step model exists and is ready; every key of a
step's ``input_map`` is an input of its model and every input of the model is mapped (an
``optional`` one may be left out: the step's requests then leave it out);
every key of its ``output_map`` is an output of its model; every ensemble tensor a step
consumes is an ensemble input or written by a step, and is written once (an ensemble input
by no step); every ensemble input is consumed; every ensemble output is written by a step;
the steps have no cycle; a tensor's datatype and per-row shape agree wherever it is
produced and consumed (an ensemble tensor's ``-1`` dims are taken from the step model); a
step model that batches (``max_batch_size`` > 0) allows at least the ensemble's
``max_batch_size`` (one without a batch dimension, 0, is allowed in a batching ensemble);
a step model may be an ensemble, but no ensemble may reach itself through its steps
(Triton's "circular dependency between ensembles", checked on the ensembles' configs:
:func:`ensemble_cycle`).  wsserve refuses what it cannot run: a step model that is
generative.

A step model may be decoupled (any number of responses per request: a decoupled Triton Python
model, or an ensemble that is itself decoupled).  As in Triton (``ValidateEnsembleConfig``'s
"decouple labels"), each tensor belongs to the lineage of the last decoupled step it flows from
(the ensemble's inputs and the steps before any decoupled one: none); a step's inputs, and the
ensemble's outputs, must all come from one lineage ("receives inputs originated from different
decoupled models"), and the ensemble is decoupled (:attr:`EnsemblePlan.decoupled`) when any step
is: each response of a decoupled step flows through the steps after it, and the ensemble answers
once per set of outputs that reaches its end (Triton sets the ensemble's
``model_transaction_policy.decoupled`` itself, whatever its config says).

:func:`needed_steps` prunes a plan for the outputs one request asks for, as Triton's
``EnsembleContext`` does (``core/src/ensemble_scheduler.cc``): a step none of whose
outputs is needed does not run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..shapes import fits
from .config import TensorConfig
from .ensemble_config import EnsembleConfig
from .tensors import TensorSpec

__all__ = ["MAX_ENSEMBLE_DEPTH", "StepSignature", "PlannedStep", "EnsemblePlan", "EnsembleError", "plan_ensemble",
           "step_key", "ensemble_chain", "ensemble_cycle", "needed_steps"]

#: Ensembles nested in one another through their steps, at most (the ensemble itself counted): a
#: request's answer passes back up through every level in one call (about 200 levels exhausted
#: Python's stack: the request never ended).  Triton sets no bound; real pipelines nest 2 or 3.
MAX_ENSEMBLE_DEPTH = 64


@dataclass(frozen=True, slots=True)
class StepSignature:
    """What a step needs of the model version it runs: its served version, tensors and kind;
    ``max_batch_size``: Triton's (0: no batch dimension; else the most rows it computes at once)."""

    model: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    kind: str = "predict"  # "predict" | "generate"
    decoupled: bool = False
    ensemble: bool = False
    max_batch_size: int = 0


@dataclass(frozen=True, slots=True)
class PlannedStep:
    """One step of a plan. ``feeds``: ``(model input, ensemble tensor)`` in the model's input
    order (an optional input the step leaves unmapped has none); ``yields``: ``(model output,
    ensemble tensor)``; ``needs``: the ensemble tensors it waits for; ``single_input``/
    ``single_output``: the model takes (returns) one array, not ``{name: array}``."""

    index: int
    model: str
    version: int | None  # None: the model's default (highest ready) version
    feeds: tuple[tuple[str, str], ...]
    yields: tuple[tuple[str, str], ...]
    needs: frozenset[str]
    single_input: bool
    single_output: bool
    output_names: tuple[str, ...]  # the model's outputs, in order
    #: its model answers any number of responses per request (each one flows on through the steps after it)
    decoupled: bool = False


@dataclass(frozen=True, slots=True)
class EnsemblePlan:
    """A checked ensemble: its tensors (shapes resolved), its steps (in an order where a step
    follows those it needs) and the signatures it was planned with (a change re-plans it)."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    steps: tuple[PlannedStep, ...]
    signatures: tuple[StepSignature, ...]
    max_batch_size: int = 0
    #: a step is decoupled: the ensemble answers any number of responses per request (as Triton sets it)
    decoupled: bool = False
    #: the decoupled step (its index) whose responses the ensemble's outputs flow from, one ensemble
    #: response per response of it; None: the outputs flow from no decoupled step (one response)
    outputs_from: int | None = None


class EnsembleError(ValueError):
    """An ensemble that cannot be served; the message names the ensemble, and the step and the
    tensor where there is one (``step`` is its index in the config, ``None`` when not about one)."""

    def __init__(self, ensemble: str, message: str, *, step: int | None = None, tensor: str | None = None) -> None:
        self.ensemble = ensemble
        self.step = step
        self.tensor = tensor
        super().__init__(message)


def step_key(model: str, version: int | None) -> tuple[str, int | None]:
    """The key of ``signatures`` in :func:`plan_ensemble` for a step's model and version."""
    return (model, version)


class _Planner:
    """One planning: the ensemble's tensors as they become known."""

    def __init__(self, config: EnsembleConfig) -> None:
        self.config = config
        self.name = config.name
        #: ensemble tensor -> (its writer: step index or -1 for an ensemble input, dtype, shape or None, dims)
        self.writers: dict[str, tuple[int, str, tuple[int, ...] | None, tuple[int, ...] | None]] = {}

    def fail(self, message: str, step: int | None = None, tensor: str | None = None) -> EnsembleError:
        where = f"ensemble {self.name!r}" + (f" step {step} (model {self.config.steps[step].model!r})" if step is not None else "")
        return EnsembleError(self.name, f"{where}: {message}", step=step, tensor=tensor)

    def signature(self, i: int, found: StepSignature | str | None) -> StepSignature:
        step = self.config.steps[i]
        if found is None:
            raise self.fail(f"model {step.model!r} is not served" + (f" in version {step.version}" if step.version else ""), i)
        if isinstance(found, str):
            raise self.fail(f"model {step.model!r} is not ready ({found})", i)
        if found.kind != "predict":
            raise self.fail(f"model {step.model!r} is generative: an ensemble's steps must be predictive models", i)
        mbs = self.config.max_batch_size
        if found.max_batch_size != 0 and found.max_batch_size < mbs:  # Triton's rule (ValidateEnsembleConfig)
            raise self.fail(f"the ensemble's max_batch_size is {mbs} but model {step.model!r} allows at most "
                            f"{found.max_batch_size} (its max_batch_size): a step model that batches must allow the "
                            "ensemble's (lower the ensemble's max_batch_size or raise the model's)", i)
        return found

    def check_maps(self, i: int, sig: StepSignature) -> None:
        step = self.config.steps[i]
        names_in = [s.name for s in sig.inputs]
        for key, tensor in step.input_map:
            if key not in names_in:
                raise self.fail(f"input_map maps {key!r} (to ensemble tensor {tensor!r}), which is not an input of "
                                f"model {step.model!r} (its inputs: {', '.join(names_in)})", i, tensor)
        mapped = {k for k, _ in step.input_map}
        for spec in sig.inputs:
            if spec.name not in mapped and not getattr(spec, "optional", False):  # Triton's: an optional input may be left out
                raise self.fail(f"input {spec.name!r} of model {step.model!r} is not mapped (input_map)", i, spec.name)
        names_out = [s.name for s in sig.outputs]
        for key, tensor in step.output_map:
            if key not in names_out:
                raise self.fail(f"output_map maps {key!r} (to ensemble tensor {tensor!r}), which is not an output of "
                                f"model {step.model!r} (its outputs: {', '.join(names_out)})", i, tensor)

    def write(self, tensor: str, writer: int, dtype: str, shape: tuple[int, ...] | None,
              dims: tuple[int, ...] | None) -> None:
        before = self.writers.get(tensor)
        if before is not None:
            first = "is an ensemble input" if before[0] < 0 else f"is written by step {before[0]} already"
            raise self.fail(f"ensemble tensor {tensor!r} {first}: a tensor is written once", writer, tensor)
        self.writers[tensor] = (writer, dtype, shape, dims)

    def agree(self, tensor: str, i: int | None, what: str, spec: TensorSpec) -> None:
        """``spec`` (a step model's tensor, or the ensemble output) must agree with ``tensor``'s writer."""
        writer, dtype, shape, dims = self.writers[tensor]
        source = "the ensemble input" if writer < 0 else f"step {writer}'s output"
        if dtype != spec.dtype:
            raise self.fail(f"ensemble tensor {tensor!r} is {dtype} ({source}) but {what} is {spec.dtype}", i, tensor)
        if shape is None:  # an ensemble input with -1 dims: the first consumer's shape, the others' must agree
            if dims is not None and (len(dims) != len(spec.shape)
                                     or any(d not in (-1, s) for d, s in zip(dims, spec.shape, strict=True))):
                raise self.fail(f"ensemble tensor {tensor!r} has dims {list(dims)} ({source}) but {what} has shape "
                                f"{list(spec.shape)}", i, tensor)
            self.writers[tensor] = (writer, dtype, spec.shape, dims)
        elif writer < 0 and dims is not None and not fits(shape, spec.shape) and fits(spec.shape, shape):
            # an ensemble input a consumer with a -1 dim shaped first: a later consumer's fixed size there
            # fixes it (the request must have it; the earlier consumer takes any size), whatever the steps' order
            self.writers[tensor] = (writer, dtype, spec.shape, dims)
        elif not fits(shape, spec.shape):  # a -1 of the reader's (a model without a batch dimension) takes any size
            raise self.fail(f"ensemble tensor {tensor!r} has shape {list(shape)} ({source}) but {what} has shape "
                            f"{list(spec.shape)}", i, tensor)

    def order(self, deps: list[set[int]]) -> list[int]:
        """The steps in an order where each follows the steps it needs (Kahn); a cycle is an error."""
        done: list[int] = []
        left = set(range(len(deps)))
        while left:
            ready = sorted(i for i in left if deps[i] <= set(done))
            if not ready:
                cycle = sorted(left)
                tensors = sorted({t for i in cycle for _, t in self.config.steps[i].input_map
                                  if self.writers.get(t, (-1,))[0] in left})
                raise self.fail(f"steps {', '.join(map(str, cycle))} depend on each other (a cycle through ensemble "
                                f"tensors {', '.join(repr(t) for t in tensors)})", cycle[0], tensors[0] if tensors else None)
            done.extend(ready)
            left -= set(ready)
        return done


def _spec(t: TensorConfig, shape: tuple[int, ...]) -> TensorSpec:
    assert t.name is not None and t.dtype is not None
    return TensorSpec(t.name, shape, t.dtype)


def plan_ensemble(config: EnsembleConfig,
                  signatures: Mapping[tuple[str, int | None], StepSignature | str],
                  ensembles: Mapping[str, Iterable[str]] | None = None) -> EnsemblePlan:
    """Check ``config`` against its step models and plan it.

    ``signatures``: per :func:`step_key` of each step, the model version's
    :class:`StepSignature`, or a string saying why it cannot serve (not ready, failed...);
    a missing key means the model is not served at all.  ``ensembles``: the step models of
    every other ensemble known (configs, served or not), for the cycle check, which comes
    first.  Raises :class:`EnsembleError` (see the module docstring for what is checked)."""
    ensembles = ensembles or {}
    p = _Planner(config)
    nested = {**ensembles, config.name: config.step_models}
    cycle = ensemble_cycle(config.name, nested)
    if cycle is not None:
        raise p.fail(f"circular dependency between ensembles: {' -> '.join(cycle)} (an ensemble cannot run itself, "
                     "directly or through its steps)")
    chain = ensemble_chain(config.name, nested)
    if len(chain) > MAX_ENSEMBLE_DEPTH:
        shown = " -> ".join((*chain[:3], "...", chain[-1]))
        raise p.fail(f"nests ensembles {len(chain)} levels deep ({shown}); at most {MAX_ENSEMBLE_DEPTH} "
                     "(MAX_ENSEMBLE_DEPTH: a request's answer passes back up through every level)")
    sigs = [p.signature(i, signatures.get(step_key(s.model, s.version))) for i, s in enumerate(config.steps)]
    for t in config.inputs:
        assert t.name is not None and t.dtype is not None
        p.write(t.name, -1, t.dtype, t.shape, t.triton_dims)
    for i, sig in enumerate(sigs):
        p.check_maps(i, sig)
        outs = {s.name: s for s in sig.outputs}
        for key, tensor in config.steps[i].output_map:
            p.write(tensor, i, outs[key].dtype, outs[key].shape, None)
    deps: list[set[int]] = []
    consumed: set[str] = set()
    for i, sig in enumerate(sigs):
        ins = {s.name: s for s in sig.inputs}
        deps.append(set())
        for key, tensor in config.steps[i].input_map:
            if tensor not in p.writers:
                raise p.fail(f"consumes ensemble tensor {tensor!r}, which is neither an ensemble input nor written by "
                             "any step", i, tensor)
            p.agree(tensor, i, f"input {key!r} of model {sig.model!r}", ins[key])
            consumed.add(tensor)
            if p.writers[tensor][0] >= 0:
                deps[i].add(p.writers[tensor][0])
    for t in config.inputs:
        if t.name not in consumed:
            raise p.fail(f"ensemble input {t.name!r} is not used by any step", None, t.name)
    outputs = []
    for t in config.outputs:
        assert t.name is not None and t.dtype is not None
        writer = p.writers.get(t.name)
        if writer is None or writer[0] < 0:
            raise p.fail(f"no step writes ensemble output {t.name!r} (no output_map maps to it)", None, t.name)
        _, _, shape, _ = writer
        assert shape is not None
        if t.shape is None and t.triton_dims is not None and (
                len(t.triton_dims) != len(shape) or any(d not in (-1, s) for d, s in zip(t.triton_dims, shape, strict=True))):
            raise p.fail(f"ensemble output {t.name!r} has dims {list(t.triton_dims)} but step {writer[0]} writes shape "
                         f"{list(shape)}", writer[0], t.name)
        p.agree(t.name, writer[0], f"ensemble output {t.name!r}", _spec(t, t.shape or shape))
        outputs.append(_spec(t, shape))
    order = p.order(deps)
    outputs_from = _check_lineages(p, sigs, order)
    inputs = []
    for t in config.inputs:
        shape = p.writers[t.name][2]  # type: ignore[index]
        assert shape is not None
        inputs.append(_spec(t, shape))
    steps = []
    for i in order:
        step, sig = config.steps[i], sigs[i]
        feeds = dict(step.input_map)
        steps.append(PlannedStep(
            i, step.model, step.version, tuple((s.name, feeds[s.name]) for s in sig.inputs if s.name in feeds),
            step.output_map,
            frozenset(feeds.values()), len(sig.inputs) == 1, len(sig.outputs) == 1, tuple(s.name for s in sig.outputs),
            sig.decoupled))
    return EnsemblePlan(config.name, tuple(inputs), tuple(outputs), tuple(steps), tuple(sigs), config.max_batch_size,
                        any(sig.decoupled for sig in sigs), outputs_from)


def _check_lineages(p: _Planner, sigs: list[StepSignature], order: list[int]) -> int | None:
    """Triton's check of a decoupled workflow: each tensor's lineage is the last decoupled step it
    flows from (-1: none); a step's mapped inputs, and the ensemble's outputs, must share one.
    Returns the outputs' (None: no decoupled step)."""
    lineage: dict[str, int] = {t.name: -1 for t in p.config.inputs if t.name is not None}

    def origin(line: int) -> str:
        return "no decoupled step" if line < 0 else f"decoupled step {line} (model {p.config.steps[line].model!r})"

    def common(tensors: list[str], i: int | None, what: str) -> int:
        lines = {tensor: lineage[tensor] for tensor in tensors}
        if len(set(lines.values())) > 1:
            first, other = tensors[0], next(t for t in tensors if lines[t] != lines[tensors[0]])
            raise p.fail(f"{what} originated from different decoupled models: ensemble tensor "
                         f"{first!r} comes from {origin(lines[first])}, {other!r} from {origin(lines[other])} (a "
                         "decoupled step's responses flow on one by one, so a step cannot pair them with tensors "
                         "of another lineage)", i, other)
        return lines[tensors[0]] if tensors else -1

    for i in order:
        step = p.config.steps[i]
        line = common([tensor for _, tensor in step.input_map], i, "the step receives inputs")
        for _, tensor in step.output_map:
            lineage[tensor] = i if sigs[i].decoupled else line
    line = common([t.name for t in p.config.outputs if t.name is not None], None, "the ensemble's outputs are")
    return None if line < 0 else line


def ensemble_cycle(name: str, ensembles: Mapping[str, Iterable[str]]) -> tuple[str, ...] | None:
    """The first cycle through which ensemble ``name`` reaches itself, as the names along it
    (``("a", "b", "a")``), or None.  ``ensembles``: each ensemble's step models (a model that is
    not a key is not an ensemble).  Depth-first in the steps' order, so the answer does not
    depend on the order in which the ensembles were loaded; iterative (a chain of thousands of
    ensembles raised RecursionError)."""
    path = [name]
    seen: set[str] = set()
    stack = [iter(tuple(ensembles.get(name, ())))]
    while stack:
        for model in stack[-1]:
            if model == name:
                return (*path, name)
            if model in ensembles and model not in seen:
                seen.add(model)
                path.append(model)
                stack.append(iter(tuple(ensembles.get(model, ()))))
                break
        else:
            stack.pop()
            if stack:
                path.pop()
    return None


def ensemble_chain(name: str, ensembles: Mapping[str, Iterable[str]]) -> tuple[str, ...]:
    """The longest chain of nested ensembles from ``name`` through its steps (``("a", "b")``: a step
    of ``a`` runs ensemble ``b``, whose steps run no ensemble), ``ensembles`` as for
    :func:`ensemble_cycle`; a step closing a cycle is not followed (the cycle is refused by itself)."""
    done: dict[str, tuple[str, ...]] = {}
    on_path = {name}
    stack = [(name, iter(tuple(ensembles.get(name, ()))))]
    while stack:
        node, steps = stack[-1]
        for model in steps:
            if model in ensembles and model not in on_path and model not in done:
                on_path.add(model)
                stack.append((model, iter(tuple(ensembles.get(model, ())))))
                break
        else:
            stack.pop()
            on_path.discard(node)
            below = [done[m] for m in ensembles.get(node, ()) if m in done]
            done[node] = (node, *max(below, key=len, default=()))
    return done[name]


def needed_steps(plan: EnsemblePlan, wanted: frozenset[str] | None) -> tuple[PlannedStep, ...]:
    """The steps of ``plan`` (in its order) that run for a request asking for the ensemble outputs
    ``wanted`` (None: all of them).  Triton's pruning, backwards from the outputs: an ensemble
    output not wanted (and read by no step) is ignored; a step whose every mapped output is
    ignored is pruned, and a tensor whose every reader was pruned is ignored in turn (a tensor
    no step reads and the ensemble does not return keeps its step, as in Triton)."""
    if wanted is None:
        return plan.steps
    unwanted = {o.name for o in plan.outputs} - wanted
    if not unwanted:
        return plan.steps
    writer = {tensor: step for step in plan.steps for _, tensor in step.yields}
    readers: dict[str, set[int]] = {}
    for step in plan.steps:
        for _, tensor in step.feeds:
            readers.setdefault(tensor, set()).add(step.index)
    ignored = {t for t in unwanted if not readers.get(t)}  # (an output a step also reads is still needed by it)
    left = {step.index: len(step.yields) for step in plan.steps}
    pruned: set[int] = set()
    while ignored:
        more: set[str] = set()
        for tensor in ignored:
            step = writer.get(tensor)
            if step is None:  # an ensemble input
                continue
            left[step.index] -= 1
            if left[step.index] == 0:
                pruned.add(step.index)
                for _, needed in step.feeds:
                    readers[needed].discard(step.index)
                    if not readers[needed] and needed not in wanted:
                        more.add(needed)
        ignored = more
    return tuple(step for step in plan.steps if step.index not in pruned)
