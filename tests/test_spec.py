"""Validation of submissions and DAG planning."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osreapi.errors import InvalidRequest
from osreapi.executor import dag
from osreapi.spec import (
    MAX_STEPS,
    Mode,
    build_steps,
    choose_mode,
    parse_body,
    validate_task_id,
)


def step(**kw):
    return {"command_type": "sh", "command_content": "true", **kw}


def error(data) -> str:
    with pytest.raises(InvalidRequest) as info:
        build_steps("t", data)
    return str(info.value)


def test_defaults_and_env_forms():
    steps = build_steps("tid", [step(env_vars=["A=1", "B=x=y"]), step(env_vars={"C": "3"}, name="n")])
    assert steps[0].name == "tid-0" and steps[1].name == "n"
    assert steps[0].env == (("A", "1"), ("B", "x=y"))
    assert steps[1].env == (("C", "3"),)
    assert steps[0].timeout is None


def test_aliases_are_canonical():
    steps = build_steps("t", [{"command_type": "python", "command_content": "print(1)"}])
    assert steps[0].command_type == "python3"


@pytest.mark.parametrize(
    "data, expected",
    [
        ({}, "expected a JSON array"),
        ([], "empty"),
        (["x"], "step 0: expected an object"),
        ([step(), {"command_content": "x"}], "step 1: command_type is required"),
        ([{"command_type": "sh"}], "step 0: command_content is required"),
        ([step(command_content="")], "step 0: command_content is required"),
        ([step(command_type="zsh-nope")], "step 0: command_type 'zsh-nope' is unknown"),
        ([step(env_vars=["NOEQUALS"])], "step 0: env_vars[0]"),
        ([step(env_vars=[1])], "step 0: env_vars[0]"),
        ([step(env_vars="A=1")], "step 0: env_vars must be"),
        ([step(env_vars={"A": {}})], "step 0: env_vars['A'] must be a string"),
        ([step(env_vars=["=v"])], "invalid name"),
        ([step(timeout="10")], "step 0: timeout"),
        ([step(timeout="-1s")], "step 0: timeout must not be negative"),
        ([step(name="a"), step(name="a")], "step 1: name 'a' is already used by step 0"),
        ([step(name="a", depends_on=["zz"])], "step 0: depends_on names an unknown step 'zz'"),
        ([step(name="a", depends_on=["a"])], "step 0: depends_on names the step itself"),
        ([step(name="a", depends_on="b")], "step 0: depends_on must be an array"),
        ([step(name="7")], "must not be all digits"),
        ([step(name="a/b")], "without '/'"),
    ],
)
def test_bad_input_names_what_and_where(data, expected):
    assert expected in error(data)


def test_unavailable_type_names_the_available_ones():
    msg = error([step(command_type="cmd")])
    assert "not available on this host" in msg and "sh" in msg


def test_cycle_is_named():
    msg = error([step(name="a", depends_on=["c"]), step(name="b", depends_on=["a"]), step(name="c", depends_on=["b"])])
    assert "dependency cycle" in msg
    assert all(name in msg for name in "abc")


def test_step_limit():
    assert f"limit is {MAX_STEPS}" in error([step()] * (MAX_STEPS + 1))
    assert len(build_steps("t", [step()] * MAX_STEPS)) == MAX_STEPS


def test_body_errors():
    for body, expected in [(b"", "empty"), (b"[", "invalid JSON"), (b"\xff", "UTF-8"), (b"[" * 100000, "")]:
        with pytest.raises(InvalidRequest) as info:
            build_steps("t", parse_body(body))
        assert expected in str(info.value)


@pytest.mark.parametrize("task_id", ["", "-a", "a" * 65, "../x", "a/b", "a b", "..", "x\x00", "healthz", "version"])
def test_bad_task_ids(task_id):
    with pytest.raises(InvalidRequest):
        validate_task_id(task_id)


@pytest.mark.parametrize("task_id", ["a", "A1", "job-2.retry_3", "9" * 64])
def test_good_task_ids(task_id):
    assert validate_task_id(task_id) == task_id


def test_mode_choice():
    plain = build_steps("t", [step(), step()])
    assert choose_mode(plain, False) is Mode.SEQUENTIAL
    assert choose_mode(plain, True) is Mode.PARALLEL
    graph = build_steps("t", [step(name="a"), step(name="b", depends_on=["a"])])
    assert choose_mode(graph, False) is Mode.DAG and choose_mode(graph, True) is Mode.DAG


def test_find_cycle():
    assert dag.find_cycle([[1], [2], [0]]) == [0, 1, 2]
    assert dag.find_cycle([[], [0], [0, 1]]) is None
    assert dag.find_cycle([[], [2], [1]]) == [1, 2]


def test_plans_and_dependents():
    assert dag.plan("sequential", 3, [[], [], []]) == ((), (0,), (1,))
    assert dag.plan("parallel", 2, [[], []]) == ((), ())
    assert dag.plan("dag", 3, [[], [0], [0]]) == ((), (0,), (0,))
    assert dag.dependents(((), (0,), (0, 1))) == ((1, 2), (2,), ())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
step_like = st.fixed_dictionaries(
    {},
    optional={
        "command_type": st.sampled_from(["sh", "bash", "python3", "cmd", "x", ""]) | json_values,
        "command_content": st.text(max_size=20) | json_values,
        "env_vars": st.lists(st.text(max_size=10), max_size=3) | json_values,
        "name": st.sampled_from(["a", "b", "c", ""]) | json_values,
        "depends_on": st.lists(st.sampled_from(["a", "b", "c", "zz"]), max_size=3) | json_values,
        "timeout": st.sampled_from(["1s", "10", "0", "-1s"]) | json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step_like, max_size=5) | json_values)
def test_validator_only_raises_invalid_request(data):
    """Random JSON is either accepted or refused with InvalidRequest — never another exception."""
    try:
        steps = build_steps("t", data)
    except InvalidRequest as exc:
        assert str(exc)
    else:
        assert steps and all(s.content and s.command_type for s in steps)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode()))
def test_body_parser_only_raises_invalid_request(body):
    try:
        parse_body(body)
    except InvalidRequest:
        pass


def test_round_trip_json():
    steps = build_steps("t", [step(name="a", env_vars=["A=1"], timeout="1s"), step(depends_on=["a"])])
    from osreapi.spec import StepSpec

    assert tuple(StepSpec.from_json(json.loads(json.dumps(s.to_json()))) for s in steps) == steps


def test_a_refused_env_value_names_its_key():
    msg = error([step(env_vars={"KEY": {}})])
    assert msg == "step 0: env_vars['KEY'] must be a string"
