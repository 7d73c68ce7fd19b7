"""The persisted shapes: one encoder and one decoder, a schema in every value, and evidence that survives them."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary.app import simulated_rollout
from canary.audit import MemoryAudit
from canary.codec import DecodeError, clone, from_data, to_data
from canary.errors import StateError
from canary.judges import make_judge
from canary.model import Histogram, Ratio, Weights
from canary.policy import Policy
from canary.scenario import builtin_scenario
from canary.state import STATE_SCHEMA, RolloutState, decode_state, encode_state, policy_digest


@dataclasses.dataclass(frozen=True)
class Inner:
    ratio: Ratio
    hist: Histogram | None = None


@dataclasses.dataclass
class Outer:
    name: str
    values: list[float]
    pods: dict[str, Inner]
    pair: tuple[int, int] = (0, 0)
    maybe: float | None = None


def test_the_codec_round_trips_nested_dataclasses_and_non_finite_floats() -> None:
    value = Outer(
        "x",
        [1.5, math.inf, -math.inf],
        {"a": Inner(Ratio(1, 2), Histogram((1.0, 5.0), (1, 2, 3)))},
        (3, 4),
        None,
    )
    data = to_data(value)
    assert json.loads(json.dumps(data)) == data  # plain JSON, no NaN or Infinity tokens
    assert data["values"] == [1.5, "inf", "-inf"]
    assert from_data(Outer, json.loads(json.dumps(data))) == value
    nan = from_data(Outer, {**data, "values": ["nan"]})
    assert math.isnan(nan.values[0])


@pytest.mark.parametrize(("change", "path", "message"), [
    ({"name": 3}, "name", "expected text, got 3"),
    ({"pods": {"a": {"ratio": {"events": 3, "trials": 1}}}}, "pods.a.ratio", "need 0 <= events <= trials"),
    ({"pods": {"a": {"ratio": {"events": "1", "trials": 2}}}}, "pods.a.ratio.events", "expected a whole number"),
    ({"pair": [1]}, "pair", "expected 2 items, got 1"),
    ({"extra": 1}, "extra", "unknown field"),
    ({"values": [True]}, "values[0]", "expected a number, got True"),
])  # fmt: skip
def test_data_that_does_not_fit_is_refused_naming_the_field(change: dict[str, object], path: str, message: str) -> None:
    data = to_data(Outer("x", [], {}))
    data.update(change)
    with pytest.raises(DecodeError) as caught:
        from_data(Outer, data)
    assert caught.value.path == path and message in caught.value.message


def test_a_missing_required_field_is_named() -> None:
    with pytest.raises(DecodeError, match=r"^name: missing$"):
        from_data(Outer, {"values": [], "pods": {}})


def test_clone_shares_nothing_mutable() -> None:
    value = Outer("x", [1.0], {"a": Inner(Ratio(1, 2))})
    copy = clone(value)
    assert copy == value and copy is not value
    copy.values.append(2.0)
    copy.pods["b"] = Inner(Ratio(0, 0))
    assert value.values == [1.0] and set(value.pods) == {"a"}
    assert copy.pods["a"] is value.pods["a"], "frozen values are shared, not copied"


def finished_state(web_policy: Policy) -> RolloutState:
    from helpers import memory_router

    router = memory_router(web_policy.target)
    sim = simulated_rollout(web_policy, builtin_scenario("healthy"), seed=2, audit=MemoryAudit(), router=router)
    sim.runner.run()
    state = router.read(web_policy.target).state
    assert state is not None
    return state


def test_a_state_round_trips_through_its_annotation_text(web_policy: Policy) -> None:
    state = finished_state(web_policy)
    judge = make_judge(web_policy)
    text = encode_state(state)
    assert json.loads(text)["schema"] == STATE_SCHEMA
    assert decode_state(text, judge.state_type) == state
    raw = decode_state(text)
    assert isinstance(raw.evidence, dict), "without the judge's type the evidence stays plain data"


def test_fields_added_within_the_schema_are_left_out_at_their_defaults(web_policy: Policy) -> None:
    """The canary before `simulated` and `unseen_since` refuses a field it does not know: a state at their
    defaults leaves them out, so it can carry on the rollout; one that needs them has them."""
    state = finished_state(web_policy)
    plain = dataclasses.replace(state, simulated=False, unseen_since=None)
    assert not {"simulated", "unseen_since"} & set(json.loads(encode_state(plain)))
    assert decode_state(encode_state(plain), make_judge(web_policy).state_type) == plain
    marked = dataclasses.replace(state, simulated=True, unseen_since=12.5)
    assert {"simulated": True, "unseen_since": 12.5}.items() <= json.loads(encode_state(marked)).items()
    assert decode_state(encode_state(marked), make_judge(web_policy).state_type) == marked


@pytest.mark.parametrize(("text", "message"), [
    ("{", "not valid JSON"),
    ("[]", "not a JSON object"),
    ('{"schema": 2}', "schema 2, this canary reads schema 1"),
    ("[" * 100_000 + "]" * 100_000, "^nested too deeply$"),  # was a RecursionError, "internal error"
    ('{"schema": 1' + "0" * 5000 + "}", "^a number of thousands of digits$"),  # no sys.set_int_max_str_digits
    ('{"schema": 1, "schema": 1}', "^the key 'schema' appears twice in one object$"),
    ('{"schema": NaN}', "^NaN is not JSON$"),
])  # fmt: skip
def test_a_damaged_state_is_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(StateError, match=message):
        decode_state(text)


def test_a_hand_edited_state_names_the_field(web_policy: Policy) -> None:
    data = json.loads(encode_state(finished_state(web_policy)))
    data["weights"] = {"baseline": 60, "canary": 60}
    with pytest.raises(StateError, match=r"^weights: weights must be non-negative and sum to 100"):
        decode_state(json.dumps(data))
    data["weights"], data["step_index"] = {"baseline": 0, "canary": 100}, 7
    with pytest.raises(StateError, match=r"step_index: 7 is not a step of \[10, 50, 100\]"):
        decode_state(json.dumps(data))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("tick", -5, r"^tick: -5 is negative$"),
    ("deadline", float("inf"), r"^Infinity is not JSON$"),  # json.dumps writes it, canary never does
    ("deadline", "inf", r"^deadline: inf is not a time$"),  # the codec's own word for it
    ("started_at", -1.0, r"^started_at: -1.0 is not a time$"),
    ("steps", [10, 50, 100, 200], r"^steps\[3\]: must be a whole percentage in 1..100, got 200$"),
    ("steps", [50, 10, 100], r"^steps: must increase strictly, got \[50, 10, 100\]$"),
    ("steps", [], r"^steps: must be a non-empty list of canary weights in percent, got an empty list$"),
    ("step_seconds", [60.0, -3.0], r"^step_seconds: \[60.0, -3.0\] holds a time that cannot be spent$"),
    ("approved", [70], r"^approved: \[70\] names a weight that is not a step of \[10, 50, 100\]$"),
])  # fmt: skip
def test_a_state_no_canary_writes_is_refused_naming_the_field(
    web_policy: Policy, field: str, value: object, message: str
) -> None:
    """Values that decode (a number, a list) but that no rollout can hold: a hand edit of the annotation."""
    data = json.loads(encode_state(finished_state(web_policy)))
    data[field] = value
    with pytest.raises(StateError, match=message):
        decode_state(json.dumps(data))


def test_the_policy_digest_ignores_where_the_policy_came_from(web_policy: Policy) -> None:
    moved = dataclasses.replace(web_policy, source_path="elsewhere.yaml", audit_path="x.jsonl")
    assert policy_digest(moved) == policy_digest(web_policy)
    assert policy_digest(dataclasses.replace(web_policy, steps=(5, 100))) != policy_digest(web_policy)


@pytest.mark.parametrize("kind", ["sequential", "kayenta", "flagger"])
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_evidence_that_went_through_the_codec_judges_exactly_as_the_original(
    web_policy: Policy, kind: str, seed: int
) -> None:
    """A restart carries on from the decoded evidence: every later judgement is the same as without it."""
    from helpers import memory_router

    from canary.app import SIM_START
    from canary.sources.simulated import SimulatedMesh

    judge = make_judge(web_policy, kind)
    mesh = SimulatedMesh(builtin_scenario("healthy"), memory_router(web_policy.target, 20), web_policy.target,
                         start=SIM_START, seed=seed)  # fmt: skip
    kept = travelled = judge.start()
    for i in range(6):
        observation = mesh.observe(
            web_policy.target.scope, web_policy.metrics, SIM_START + 60 * i, SIM_START + 60 * (i + 1)
        )
        step = i // 3
        kept, a = judge.judge(kept, observation, step)
        travelled = from_data(judge.state_type, json.loads(json.dumps(to_data(travelled))))
        travelled, b = judge.judge(travelled, observation, step)
        assert a == b
    assert to_data(kept) == to_data(travelled)


def test_weights_in_the_state_are_checked_on_decode() -> None:
    with pytest.raises(DecodeError):
        from_data(Weights, {"baseline": -1, "canary": 101})


def test_encoded_state_of_a_long_rollout_fits_an_annotation(web_policy: Policy, tmp_path: Path) -> None:
    """Kubernetes caps all annotations of an object at 256 KiB together; the state stays far below."""
    assert len(encode_state(finished_state(web_policy)).encode()) < 32 * 1024


def test_a_policy_without_webhooks_keeps_the_digest_it_had_before_webhooks_existed() -> None:
    """A rollout started by the canary before `spec.webhooks` resumes under this one with the same file; the
    digest below is what that canary computed for policies/web-app.yaml. Links never count."""
    import dataclasses
    from pathlib import Path

    from canary.policy import Links, load_policy
    from canary.state import policy_digest

    shipped = load_policy(Path(__file__).resolve().parent.parent / "policies" / "web-app.yaml")
    assert policy_digest(shipped) == "5d1382f28d8d8fd8"
    assert policy_digest(dataclasses.replace(shipped, links=Links(jaeger="http://127.0.0.1:1"))) == "5d1382f28d8d8fd8"
