"""Scenario files: the built-in one compiles to its documented spike; bad ones name the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hotshard.local.scenario import ScenarioError, compile_plan, load_scenario, parse_scenario


def valid() -> dict[str, object]:
    return {
        "name": "tiny",
        "base_rate": 100,
        "campaigns": {
            "dataset": "inline",
            "keys": [{"name": "a", "weight": 3}, {"name": "b", "weight": 1}],
        },
        "spike": {
            "campaigns": ["b"],
            "factor": 10,
            "trace": "inline",
            "values": [1, 4, 2],
            "minutes": 3,
        },
        "phases": {"before_seconds": 2, "after_seconds": 2},
    }


def test_builtin_scenario_spikes_its_campaigns_to_the_factor() -> None:
    plan = compile_plan(load_scenario("election-night"))
    normal = plan.hot_normal_rate
    # The trace's peak minute maps to exactly `factor` times the campaigns' normal rate.
    assert max(plan.hot_rates) == pytest.approx(normal * 1000)
    assert plan.hot_rates[0] == pytest.approx(normal)
    assert plan.hot == ("Evan_McMullin", "Faithless_elector")
    assert plan.duration == 20 + 40 + 45


def test_inline_plan_follows_the_trace_shape() -> None:
    plan = compile_plan(parse_scenario(valid()))
    # b has a quarter of 100 rps; the trace 1,4,2 peaks at 4 -> 10x.
    assert plan.hot_rates == pytest.approx(
        [25, 25, 25 * (1 + 9 / 4), 250, 25 * (1 + 9 / 2), 25, 25]
    )
    assert plan.other_rate == pytest.approx(75)
    assert plan.phase_of(1.9) == "before"
    assert plan.phase_of(2.0) == "during"
    assert plan.phase_of(5.0) == "after"


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("base_rate",), -5, "base_rate"),
        (("spike", "factor"), "lots", "spike.factor"),
        (("spike", "trace"), "nasdaq", "spike.trace"),
        (("phases", "before_seconds"), 0, "phases.before_seconds"),
        (("campaigns", "keys", 0, "weight"), 0, "campaigns.keys.0.weight"),
    ],
)
def test_malformed_field_is_named(path: tuple[object, ...], value: object, field: str) -> None:
    doc = valid()
    node: object = doc
    for key in path[:-1]:
        node = node[key]  # type: ignore[index]
    node[path[-1]] = value  # type: ignore[index]
    with pytest.raises(ScenarioError, match=re.escape(f"field `{field}`")):
        parse_scenario(doc)


def test_unknown_field_is_named() -> None:
    doc = valid()
    doc["spike"]["shape"] = "tall"  # type: ignore[index]
    with pytest.raises(ScenarioError, match=r"field `spike\.shape`"):
        parse_scenario(doc)


def test_missing_trace_parameter_is_named() -> None:
    doc = valid()
    doc["spike"] = {"campaigns": ["b"], "trace": "worldcup98", "minutes": 3}
    with pytest.raises(ScenarioError, match=r"trace 'worldcup98' needs `start`"):
        parse_scenario(doc)


def test_hot_campaign_outside_distribution_is_named() -> None:
    doc = valid()
    doc["spike"]["campaigns"] = ["zzz"]  # type: ignore[index]
    with pytest.raises(ScenarioError, match=r"field `spike\.campaigns`.*zzz"):
        compile_plan(parse_scenario(doc))


def test_malformed_file_is_rejected_with_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\nbase_rate: 10\ncampaigns: {dataset: wikipedia_top100_election}\n"
        "spike: {campaigns: [Joe_Biden], trace: worldcup98, start: '1998-05-18 12:15:00',"
        " minutes: 0}\nphases: {before_seconds: 1, after_seconds: 1}\n"
    )
    with pytest.raises(ScenarioError, match=r"bad.yaml is invalid: field `spike.minutes`"):
        load_scenario(path)


def test_unknown_trace_minute_is_named() -> None:
    doc = valid()
    doc["campaigns"] = {"dataset": "wikipedia_top100_election"}
    doc["spike"] = {
        "campaigns": ["Joe_Biden"],
        "trace": "worldcup98",
        "start": "1901-01-01 00:00:00",
        "minutes": 3,
    }
    with pytest.raises(ScenarioError, match=r"field `spike\.start`"):
        compile_plan(parse_scenario(doc))


def test_a_scenario_that_is_not_text_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"name: x\n\xff\xfe\x00junk")
    with pytest.raises(ScenarioError, match="is not UTF-8 text"):
        load_scenario(path)


def test_a_repeated_campaign_key_is_refused_with_the_field() -> None:
    doc = valid()
    doc["campaigns"]["keys"] = [  # type: ignore[index]
        {"name": "a", "weight": 1},
        {"name": "b", "weight": 1},
        {"name": "a", "weight": 2},
    ]
    with pytest.raises(
        ScenarioError,
        match=r"field `campaigns\.keys`: campaign names must be unique; repeated: a$",
    ):
        parse_scenario(doc)


def test_a_repeated_spike_campaign_is_refused_with_the_field() -> None:
    doc = valid()
    doc["spike"]["campaigns"] = ["b", "b"]  # type: ignore[index]
    with pytest.raises(ScenarioError, match=r"field `spike\.campaigns`: .*repeated: b$"):
        parse_scenario(doc)


def test_a_scenario_whose_every_campaign_is_hot_gets_no_other_generator(tmp_path: Path) -> None:
    from hotshard.local.traffic import build_specs

    doc = valid()
    doc["campaigns"]["keys"] = [{"name": "a", "weight": 1}]  # type: ignore[index]
    doc["spike"]["campaigns"] = ["a"]  # type: ignore[index]
    plan = compile_plan(parse_scenario(doc))
    assert plan.other_rate == 0.0
    specs = build_specs(plan, "http://127.0.0.1:9/openrtb2/auction", tmp_path / "t.csv", seed=1)
    # NB: a "constant:0.000" generator is what crashed a child process before.
    assert list(specs) == ["hot"]
    assert specs["hot"].names == ("a",)  # type: ignore[attr-defined]
    assert specs["hot"].hot == 1


def test_a_scenario_with_steady_campaigns_gets_both_generators(tmp_path: Path) -> None:
    from hotshard.local.traffic import build_specs

    plan = compile_plan(parse_scenario(valid()))
    specs = build_specs(plan, "http://127.0.0.1:9/openrtb2/auction", tmp_path / "t.csv", seed=1)
    assert list(specs) == ["other", "hot"]
    assert specs["other"].profile == "constant:75.000"
    assert specs["other"].names == ("a",)  # type: ignore[attr-defined]


def test_an_unknown_name_lists_the_built_in_scenarios(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as caught:
        load_scenario("election-nite")
    assert str(caught.value).endswith(
        "No such file or directory (built-in scenarios: advertiser-bug, election-night)"
    )
    with pytest.raises(ScenarioError) as caught:
        load_scenario(tmp_path / "mine.yaml")  # a path: no list of names
    assert (
        str(caught.value)
        == f"cannot read scenario {tmp_path / 'mine.yaml'}: No such file or directory"
    )
