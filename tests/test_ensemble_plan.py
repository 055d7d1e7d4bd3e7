"""Ensembles, sans-I/O: a config.pbtxt with ``platform: "ensemble"`` parsed, and its steps planned
as a DAG against the step models' signatures (:mod:`wsserve.repository.ensemble_plan`)."""

from __future__ import annotations

import pytest

pytest.importorskip("tritonclient.grpc")

from wsserve.repository import ConfigError, TensorSpec  # noqa: E402
from wsserve.repository.ensemble_plan import (  # noqa: E402
    MAX_ENSEMBLE_DEPTH,
    EnsembleError,
    StepSignature,
    ensemble_cycle,
    needed_steps,
    plan_ensemble,
)
from wsserve.repository.pbtxt import parse_pbtxt  # noqa: E402


def ensemble_pbtxt(steps: str, *, inputs: str = '{ name: "IN" data_type: TYPE_FP32 dims: [ 3 ] }',
                   outputs: str = '{ name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] }') -> str:
    return f"""
name: "pipe"
platform: "ensemble"
max_batch_size: 8
input [ {inputs} ]
output [ {outputs} ]
ensemble_scheduling {{ step [ {steps} ] }}
"""


def step(model: str, ins: dict[str, str], outs: dict[str, str], version: int = -1) -> str:
    imap = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in ins.items())
    omap = " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outs.items())
    return f'{{ model_name: "{model}" model_version: {version} {imap} {omap} }}'


CHAIN = ", ".join([step("scale", {"x": "IN"}, {"y": "scaled"}), step("linear", {"x": "scaled"}, {"y": "OUT"})])


def sig(model: str, ins: dict[str, tuple[int, ...]], outs: dict[str, tuple[int, ...]], dtype: str = "float32",
        **kw: object) -> StepSignature:
    return StepSignature(model, "1", tuple(TensorSpec(n, s, dtype) for n, s in ins.items()),
                         tuple(TensorSpec(n, s, dtype) for n, s in outs.items()), **kw)  # type: ignore[arg-type]


SIGS = {("scale", None): sig("scale", {"x": (3,)}, {"y": (3,)}), ("linear", None): sig("linear", {"x": (3,)}, {"y": (2,)})}


def plan(text: str, sigs: dict = SIGS):  # type: ignore[no-untyped-def]
    return plan_ensemble(parse_pbtxt(text, "pipe/config.pbtxt", model_name="pipe").ensemble, sigs)


def test_a_chain_is_planned_in_dependency_order_with_resolved_tensors() -> None:
    # steps listed last-first still run first-first
    text = ensemble_pbtxt(", ".join([step("linear", {"x": "scaled"}, {"y": "OUT"}), step("scale", {"x": "IN"}, {"y": "scaled"})]))
    p = plan(text)
    assert [(s.index, s.model) for s in p.steps] == [(1, "scale"), (0, "linear")]
    assert p.steps[1].needs == {"scaled"} and p.steps[0].needs == {"IN"}
    assert [(t.name, t.shape, t.dtype) for t in p.inputs] == [("IN", (3,), "float32")]
    assert [(t.name, t.shape, t.dtype) for t in p.outputs] == [("OUT", (2,), "float32")]


def test_independent_steps_need_only_the_ensemble_input() -> None:
    sigs = {**SIGS, ("other", None): sig("other", {"x": (3,)}, {"y": (3,)}),
            ("join", None): sig("join", {"a": (3,), "b": (3,)}, {"y": (2,)})}
    text = ensemble_pbtxt(", ".join([step("scale", {"x": "IN"}, {"y": "s"}), step("other", {"x": "IN"}, {"y": "o"}),
                                     step("join", {"a": "s", "b": "o"}, {"y": "OUT"})]))
    p = plan(text, sigs)
    assert [s.model for s in p.steps] == ["scale", "other", "join"]
    assert p.steps[0].needs == p.steps[1].needs == {"IN"} and p.steps[2].needs == {"s", "o"}
    assert p.steps[2].feeds == (("a", "s"), ("b", "o")) and not p.steps[2].single_input


def test_the_ensembles_minus_one_dims_are_taken_from_the_step_models() -> None:
    text = ensemble_pbtxt(CHAIN, inputs='{ name: "IN" data_type: TYPE_FP32 dims: [ -1 ] }',
                          outputs='{ name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] }')
    p = plan(text)
    assert p.inputs[0].shape == (3,) and p.outputs[0].shape == (2,)


def test_a_fixed_tensor_feeds_a_steps_variable_dim() -> None:
    """A step input with a -1 dim (a model without a batch dimension, dims [-1, 3]) takes any size there, so a
    fixed ensemble tensor ([2, 3]) feeds it, as in Triton (its ensemble check compares dims with wildcards); the
    tensor keeps its fixed shape. It was refused: "ensemble tensor 'IN' has shape [2, 3] (the ensemble input)
    but input 'x' of model 'centered' has shape [-1, 3]". A variable tensor into a fixed input stays refused."""
    sigs = {("centered", None): sig("centered", {"x": (-1, 3)}, {"y": (-1, 3)}),
            ("fixed", None): sig("fixed", {"x": (2, 3)}, {"y": (2, 3)})}
    whole = '{ name: "IN" data_type: TYPE_FP32 dims: [ 2, 3 ] }'
    p = plan(ensemble_pbtxt(step("centered", {"x": "IN"}, {"y": "OUT"}), inputs=whole,
                            outputs='{ name: "OUT" data_type: TYPE_FP32 dims: [ -1, 3 ] }'), sigs)
    assert p.inputs[0].shape == (2, 3) and p.outputs[0].shape == (-1, 3)
    chain = ", ".join([step("centered", {"x": "IN"}, {"y": "mid"}), step("fixed", {"x": "mid"}, {"y": "OUT"})])
    err = _error(ensemble_pbtxt(chain, inputs=whole, outputs=whole), sigs)
    assert "ensemble tensor 'mid' has shape [-1, 3] (step 0's output) but input 'x' of model 'fixed' has shape [2, 3]" \
        in str(err)


def test_an_ensemble_input_with_a_minus_one_dim_takes_a_fixed_consumers_size_whatever_the_steps_order() -> None:
    """IN dims [-1, 3] read by 'centered' (dims [-1, 3]) and by 'fixed' ([2, 3]): IN is [2, 3], listed in either
    order (Triton compares each with wildcards). Listed centered first, it was refused: "ensemble tensor 'IN' has
    shape [-1, 3] (the ensemble input) but input 'x' of model 'fixed' has shape [2, 3]"."""
    sigs = {("centered", None): sig("centered", {"x": (-1, 3)}, {"y": (-1, 3)}),
            ("fixed", None): sig("fixed", {"x": (2, 3)}, {"y": (2, 3)})}
    variable = '{ name: "IN" data_type: TYPE_FP32 dims: [ -1, 3 ] }'
    outs = '{ name: "A" data_type: TYPE_FP32 dims: [ -1, 3 ] }, { name: "B" data_type: TYPE_FP32 dims: [ 2, 3 ] }'
    centered, fixed = step("centered", {"x": "IN"}, {"y": "A"}), step("fixed", {"x": "IN"}, {"y": "B"})
    for steps in ([centered, fixed], [fixed, centered]):
        p = plan(ensemble_pbtxt(", ".join(steps), inputs=variable, outputs=outs), sigs)
        assert p.inputs[0].shape == (2, 3), steps
    err = _error(ensemble_pbtxt(", ".join([centered, fixed]), inputs='{ name: "IN" data_type: TYPE_FP32 dims: [ -1, 4 ] }',
                                outputs=outs), sigs)
    assert "ensemble tensor 'IN' has dims [-1, 4] (the ensemble input) but input 'x' of model 'centered'" in str(err)


def _error(text: str, sigs: dict = SIGS) -> EnsembleError:  # type: ignore[type-arg]
    with pytest.raises(EnsembleError) as info:
        plan(text, sigs)
    return info.value


def test_a_cycle_is_refused_naming_the_steps_and_a_tensor() -> None:
    sigs = {**SIGS, ("join", None): sig("join", {"a": (3,), "b": (3,)}, {"y": (3,)})}
    text = ensemble_pbtxt(", ".join([step("join", {"a": "IN", "b": "back"}, {"y": "fwd"}),
                                     step("scale", {"x": "fwd"}, {"y": "back"}), step("linear", {"x": "fwd"}, {"y": "OUT"})]))
    err = _error(text, sigs)
    assert "ensemble 'pipe' step 0 (model 'join')" in str(err) and "cycle" in str(err)
    assert err.step == 0 and err.tensor in ("back", "fwd")


def test_a_missing_step_model_is_refused_naming_the_step() -> None:
    err = _error(ensemble_pbtxt(CHAIN), {("scale", None): SIGS[("scale", None)]})
    assert str(err) == "ensemble 'pipe' step 1 (model 'linear'): model 'linear' is not served" and err.step == 1


def test_a_step_model_not_ready_makes_the_ensemble_not_ready() -> None:
    err = _error(ensemble_pbtxt(CHAIN), {**SIGS, ("linear", None): "model 'linear' has no ready version (1: loading)"})
    assert "step 1 (model 'linear'): model 'linear' is not ready (model 'linear' has no ready version" in str(err)


def test_an_unmapped_tensor_is_refused_naming_it() -> None:
    text = ensemble_pbtxt(", ".join([step("scale", {"x": "IN"}, {"y": "scaled"}), step("linear", {"x": "scaledd"}, {"y": "OUT"})]))
    err = _error(text)
    assert str(err) == ("ensemble 'pipe' step 1 (model 'linear'): consumes ensemble tensor 'scaledd', which is neither "
                        "an ensemble input nor written by any step") and err.tensor == "scaledd"


def test_a_step_input_left_unmapped_and_a_key_the_model_lacks_are_refused() -> None:
    sigs = {**SIGS, ("linear", None): sig("linear", {"x": (3,), "z": (3,)}, {"y": (2,)})}
    assert "input 'z' of model 'linear' is not mapped" in str(_error(ensemble_pbtxt(CHAIN), sigs))
    text = ensemble_pbtxt(", ".join([step("scale", {"x": "IN"}, {"y": "scaled"}), step("linear", {"q": "scaled"}, {"y": "OUT"})]))
    assert "input_map maps 'q' (to ensemble tensor 'scaled'), which is not an input of model 'linear'" in str(_error(text))


def test_a_datatype_mismatch_is_refused_naming_the_tensor() -> None:
    sigs = {**SIGS, ("linear", None): sig("linear", {"x": (3,)}, {"y": (2,)}, dtype="float64")}
    err = _error(ensemble_pbtxt(CHAIN), sigs)
    assert str(err) == ("ensemble 'pipe' step 1 (model 'linear'): ensemble tensor 'scaled' is float32 (step 0's output) "
                        "but input 'x' of model 'linear' is float64") and err.tensor == "scaled"


def test_a_shape_mismatch_is_refused() -> None:
    sigs = {**SIGS, ("linear", None): sig("linear", {"x": (4,)}, {"y": (2,)})}
    assert "ensemble tensor 'scaled' has shape [3] (step 0's output) but input 'x' of model 'linear' has shape [4]" in str(
        _error(ensemble_pbtxt(CHAIN), sigs))


def test_unused_inputs_unwritten_outputs_and_tensors_written_twice_are_refused() -> None:
    two_in = '{ name: "IN" data_type: TYPE_FP32 dims: [ 3 ] }, { name: "EXTRA" data_type: TYPE_FP32 dims: [ 3 ] }'
    assert "ensemble input 'EXTRA' is not used by any step" in str(_error(ensemble_pbtxt(CHAIN, inputs=two_in)))
    two_out = '{ name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] }, { name: "MORE" data_type: TYPE_FP32 dims: [ 2 ] }'
    assert "no step writes ensemble output 'MORE'" in str(_error(ensemble_pbtxt(CHAIN, outputs=two_out)))
    twice = ", ".join([step("scale", {"x": "IN"}, {"y": "OUT"}), step("linear", {"x": "IN"}, {"y": "OUT"})])
    assert "step 1 (model 'linear'): ensemble tensor 'OUT' is written by step 0 already" in str(_error(ensemble_pbtxt(twice)))


def test_generative_steps_are_refused_naming_them() -> None:
    sigs = {**SIGS, ("linear", None): sig("linear", {"x": (3,)}, {"y": (2,)}, kind="generate")}
    assert "step 1 (model 'linear'): model 'linear' is generative" in str(_error(ensemble_pbtxt(CHAIN), sigs))


def test_a_decoupled_step_makes_the_ensemble_decoupled_whatever_its_config_says() -> None:
    """Triton's ValidateEnsembleConfig sets the ensemble's ``model_transaction_policy.decoupled`` from
    its steps: a decoupled step makes it decoupled (its config need not say so, and may say false)."""
    sigs = {**SIGS, ("scale", None): sig("scale", {"x": (3,)}, {"y": (3,)}, decoupled=True)}
    for policy in ("", "model_transaction_policy { decoupled: false }", "model_transaction_policy { decoupled: true }"):
        p = plan(ensemble_pbtxt(CHAIN) + policy, sigs)
        assert p.decoupled and [s.decoupled for s in p.steps] == [True, False]
        assert not plan(ensemble_pbtxt(CHAIN) + policy).decoupled


def test_a_step_mixing_tensors_of_different_decoupled_lineages_is_refused_as_tritons() -> None:
    """As Triton's "receives inputs originated from different decoupled models": a step after a
    decoupled one may not also read an ensemble input (or another decoupled step's tensors); nor
    may the ensemble's outputs come from different lineages."""
    gen = sig("gen", {"x": (3,)}, {"y": (3,)}, decoupled=True)
    join = sig("join", {"a": (3,), "b": (3,)}, {"y": (2,)})
    text = ensemble_pbtxt(", ".join([step("gen", {"x": "IN"}, {"y": "g"}),
                                     step("join", {"a": "g", "b": "IN"}, {"y": "OUT"})]))
    error = _error(text, {("gen", None): gen, ("join", None): join})
    assert "step 1 (model 'join'): the step receives inputs originated from different decoupled models: ensemble " \
        "tensor 'g' comes from decoupled step 0 (model 'gen'), 'IN' from no decoupled step" in str(error)
    two_out = '{ name: "OUT" data_type: TYPE_FP32 dims: [ 3 ] }, { name: "RAW" data_type: TYPE_FP32 dims: [ 3 ] }'
    text = ensemble_pbtxt(", ".join([step("scale", {"x": "IN"}, {"y": "RAW"}), step("gen", {"x": "IN"}, {"y": "OUT"})]),
                          outputs=two_out)
    error = _error(text, {**SIGS, ("gen", None): gen})
    assert "ensemble 'pipe': the ensemble's outputs are originated from different decoupled models" in str(error)


def test_a_step_that_is_an_ensemble_is_planned_like_any_model() -> None:
    sigs = {**SIGS, ("linear", None): sig("linear", {"x": (3,)}, {"y": (2,)}, ensemble=True, max_batch_size=8)}
    p = plan_ensemble(parse_pbtxt(ensemble_pbtxt(CHAIN), "pipe/config.pbtxt", model_name="pipe").ensemble, sigs,
                      {"linear": ("inner_a", "inner_b")})
    assert [s.model for s in p.steps] == ["scale", "linear"]


def test_pinned_step_versions_are_looked_up_as_such() -> None:
    text = ensemble_pbtxt(", ".join([step("scale", {"x": "IN"}, {"y": "scaled"}, version=2),
                                     step("linear", {"x": "scaled"}, {"y": "OUT"})]))
    assert "model 'scale' is not served in version 2" in str(_error(text))
    p = plan(text, {**SIGS, ("scale", 2): SIGS[("scale", None)]})
    assert [(s.model, s.version) for s in p.steps] == [("scale", 2), ("linear", None)]


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"ensemble_scheduling.step\[0\].model_name'.*required"):
        parse_pbtxt(ensemble_pbtxt('{ input_map { key: "x" value: "IN" } output_map { key: "y" value: "OUT" } }'), "c")
    with pytest.raises(ConfigError, match=r"key 'input': is required in an ensemble"):
        parse_pbtxt('platform: "ensemble" output [ { name: "o" data_type: TYPE_FP32 dims: [1] } ] '
                    'ensemble_scheduling { step [ ] }', "c")
    with pytest.raises(ConfigError, match=r"key 'ensemble_scheduling': .*set platform: \"ensemble\""):
        parse_pbtxt('platform: "onnxruntime_onnx" ensemble_scheduling { step [ { model_name: "m" } ] }', "c")


def test_an_ensemble_naming_itself_as_a_step_is_refused_as_a_cycle() -> None:
    text = ensemble_pbtxt(step("pipe", {"IN": "IN"}, {"OUT": "OUT"}))
    with pytest.raises(EnsembleError, match=r"^ensemble 'pipe': circular dependency between ensembles: pipe -> pipe "):
        plan(text, {})  # whatever the pool says of it (not served yet, or failed)


def test_a_cycle_across_ensembles_is_refused_naming_it_before_anything_else() -> None:
    # pipe -> linear (an ensemble) -> inner -> pipe; 'linear' need not even be served for the cycle to be seen
    text = ensemble_pbtxt(CHAIN)
    ensembles = {"linear": ("inner",), "inner": ("scale", "pipe"), "other": ("pipe",)}
    config = parse_pbtxt(text, "pipe/config.pbtxt", model_name="pipe").ensemble
    with pytest.raises(EnsembleError, match=r"^ensemble 'pipe': circular dependency between ensembles: "
                                            r"pipe -> linear -> inner -> pipe "):
        plan_ensemble(config, {("scale", None): SIGS[("scale", None)]}, ensembles)
    # a cycle 'other' only leads into is not its own (it fails as its step model 'pipe' is not served)
    assert ensemble_cycle("other", {**ensembles, "pipe": ("scale", "linear")}) is None
    assert ensemble_cycle("inner", {**ensembles, "pipe": ("scale", "linear")}) == ("inner", "pipe", "linear", "inner")
    assert ensemble_cycle("pipe", {"pipe": ("a", "b"), "b": ("c",), "c": ()}) is None


def test_ensembles_nested_deeper_than_the_bound_are_refused_naming_the_chain() -> None:
    """A request's results pass back up through each nested ensemble: a chain of 250 made each
    request through it end without a terminal frame (RecursionError), and a chain of 1000 made the
    cycle check itself raise RecursionError.  At most MAX_ENSEMBLE_DEPTH levels are planned."""
    text = ensemble_pbtxt(CHAIN)
    config = parse_pbtxt(text, "pipe/config.pbtxt", model_name="pipe").ensemble
    sigs = {("scale", None): SIGS[("scale", None)], ("linear", None): SIGS[("linear", None)]}
    # pipe -> linear -> e1 -> ... -> ek -> plain: "linear" is an ensemble here; k + 2 levels
    k = MAX_ENSEMBLE_DEPTH - 2
    chain = {"linear": ("e1",), **{f"e{i}": (f"e{i + 1}",) for i in range(1, k)}, f"e{k}": ("plain",)}
    plan_ensemble(config, sigs, chain)  # exactly the bound: planned
    deeper = {**chain, f"e{k}": (f"e{k + 1}",), f"e{k + 1}": ("plain",)}
    with pytest.raises(EnsembleError, match=rf"^ensemble 'pipe': nests ensembles {MAX_ENSEMBLE_DEPTH + 1} levels deep "
                                            rf"\(pipe -> linear -> e1 -> \.\.\. -> e{k + 1}\); at most "
                                            rf"{MAX_ENSEMBLE_DEPTH}"):
        plan_ensemble(config, sigs, deeper)
    long = {f"e{i}": (f"e{i + 1}",) for i in range(5000)}
    assert ensemble_cycle("e0", long) is None  # (no RecursionError)
    assert ensemble_cycle("e0", {**long, "e5000": ("e0",)})[-3:] == ("e4999", "e5000", "e0")


def test_a_batching_step_allowing_fewer_rows_than_the_ensemble_is_refused_as_triton_does() -> None:
    # Triton's ValidateEnsembleConfig: a step model's max_batch_size, when not 0, must be >= the ensemble's (8)
    small = {**SIGS, ("linear", None): sig("linear", {"x": (3,)}, {"y": (2,)}, max_batch_size=4)}
    err = _error(ensemble_pbtxt(CHAIN), small)
    assert str(err) == ("ensemble 'pipe' step 1 (model 'linear'): the ensemble's max_batch_size is 8 but model 'linear' "
                        "allows at most 4 (its max_batch_size): a step model that batches must allow the ensemble's "
                        "(lower the ensemble's max_batch_size or raise the model's)") and err.step == 1
    for mbs in (8, 16, 0):  # as many, more, or no batch dimension (a non-batching model in a batching ensemble)
        plan(ensemble_pbtxt(CHAIN), {**SIGS, ("linear", None): sig("linear", {"x": (3,)}, {"y": (2,)}, max_batch_size=mbs)})
    plan(ensemble_pbtxt(CHAIN).replace("max_batch_size: 8", "max_batch_size: 0"), small)  # an ensemble without batching


#: IN -> a -> A_OUT; IN -> b -> mid -> c -> C_OUT; mid is also the output MID; IN -> d -> dangling (read by no one)
PRUNE = ", ".join([step("a", {"x": "IN"}, {"y": "A_OUT"}), step("b", {"x": "IN"}, {"y": "mid"}),
                   step("c", {"x": "mid"}, {"y": "C_OUT"}), step("d", {"x": "IN"}, {"y": "dangling"})])
PRUNE_OUTS = ", ".join(f'{{ name: "{n}" data_type: TYPE_FP32 dims: [ 3 ] }}' for n in ("A_OUT", "mid", "C_OUT"))


def test_only_the_steps_the_wanted_outputs_need_run_as_triton_prunes_them() -> None:
    sigs = {(m, None): sig(m, {"x": (3,)}, {"y": (3,)}) for m in "abcd"}
    p = plan(ensemble_pbtxt(PRUNE, outputs=PRUNE_OUTS), sigs)

    def models(wanted: frozenset[str] | None) -> list[str]:
        return sorted(s.model for s in needed_steps(p, wanted))

    assert models(None) == models(frozenset({"A_OUT", "mid", "C_OUT"})) == ["a", "b", "c", "d"]
    assert models(frozenset({"A_OUT"})) == ["a", "d"]  # b and c pruned; d's tensor is no output: kept, as Triton does
    assert models(frozenset({"C_OUT"})) == ["b", "c", "d"]  # a pruned
    assert models(frozenset({"mid"})) == ["b", "d"]  # c pruned, b kept: its output is wanted
    assert models(frozenset({"mid", "A_OUT"})) == ["a", "b", "d"]
    assert needed_steps(p, frozenset({"C_OUT"})) == tuple(s for s in p.steps if s.model != "a")  # the plan's order


def test_a_steps_optional_input_may_be_left_unmapped() -> None:
    """Triton's rule (ensemble_utils.cc): an input of a step model that is ``optional`` may be left
    out of ``input_map``; the step then feeds only what it maps.  A required one may not (before:
    every input had to be mapped)."""
    opt = TensorSpec("s", (1,), "float32", optional=True)
    sigs = {**SIGS, ("scaled", None): StepSignature("scaled", "1", (TensorSpec("x", (3,), "float32"), opt),
                                                     (TensorSpec("y", (2,), "float32"),))}
    p = plan(ensemble_pbtxt(step("scaled", {"x": "IN"}, {"y": "OUT"})), sigs)
    assert p.steps[0].feeds == (("x", "IN"),) and not p.steps[0].single_input
    with pytest.raises(EnsembleError, match=r"input 'x' of model 'scaled' is not mapped"):
        plan(ensemble_pbtxt(step("scaled", {"s": "IN"}, {"y": "OUT"}), inputs='{ name: "IN" data_type: TYPE_FP32 dims: [ 1 ] }'), sigs)
