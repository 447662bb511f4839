"""The Plan: validation on construction, JSON round trip, atomic save, clear load errors."""

from __future__ import annotations

import json
import os

import pytest

from halp_trt.errors import UserError
from halp_trt.solver import Plan, PlanError


def make_plan(**overrides) -> Plan:
    fields = {
        "keep": {1: (0, 2, 3), 4: (1,)},
        "sizes": {1: 4, 4: 2},
        "widths": {"conv1": (3, 3), "conv2": (3, 1), "fc": (1, 10)},
        "predicted_ms": 1.25,
        "budget_ms": 1.5,
        "value": 2.5,
        "total_value": 4.0,
        "cost_model": "joint",
        "model_ms": 1.2,
        "overhead_ms": -0.05,
        "scale": 1.1,
        "bundles": {1: 1, 4: 1},
        "solves": 3,
    }
    fields.update(overrides)
    return Plan(**fields)


def test_round_trip_through_json(tmp_path):
    plan = make_plan()
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    path = plan.save(tmp_path / "plan.json")
    assert Plan.load(path) == plan
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temp file left
    d = plan.to_dict()
    assert d["groups"][0] == {"id": 1, "size": 4, "bundle": 1, "kept": 3, "keep": [0, 2, 3]}
    assert d["widths"]["fc"] == [1, 10]


def test_derived_fields():
    plan = make_plan()
    assert plan.keep_counts == {1: 3, 4: 1}
    assert plan.retained == pytest.approx(0.625)
    assert plan.within_budget
    assert make_plan(total_value=0.0, value=0.0).retained == 1.0
    assert not make_plan(predicted_ms=2.0).within_budget


def test_normalises_types():
    plan = make_plan(keep={"1": [0, 2, 3], "4": [1]}, sizes={"1": 4, "4": 2})
    assert plan.keep == {1: (0, 2, 3), 4: (1,)}
    assert plan == make_plan()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"keep": {1: (0, 4), 4: (1,)}}, "outside"),
        ({"keep": {1: (2, 0), 4: (1,)}}, "ascending"),
        ({"keep": {1: (0, 0), 4: (1,)}}, "ascending"),
        ({"keep": {1: (0, 1, 2, 3, 3), 4: (1,)}}, "more channels"),
        ({"sizes": {1: 4}}, "different groups"),
        ({"widths": {"conv1": (-1, 3)}}, "negative"),
        ({"cost_model": "two-sided"}, "cost model"),
        ({"predicted_ms": float("nan")}, "predicted_ms"),
        ({"bundles": {1: 0}}, "bundle"),
        ({"solves": 0}, "solves"),
        ({"scale": 0.0}, "scale"),
        ({"scale": float("inf")}, "scale"),
    ],
)
def test_invalid_plans_are_refused(overrides, match):
    with pytest.raises(PlanError, match=match):
        make_plan(**overrides)


def test_load_errors_are_user_errors(tmp_path):
    with pytest.raises(PlanError, match="not found"):
        Plan.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="cannot read"):
        Plan.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(PlanError, match="does not hold a plan"):
        Plan.load(bad)
    d = make_plan().to_dict()
    bad.write_text(json.dumps({**d, "format": 99}))
    with pytest.raises(PlanError, match="format 99"):
        Plan.load(bad)
    del d["widths"]
    bad.write_text(json.dumps(d))
    with pytest.raises(PlanError, match="widths"):
        Plan.load(bad)
    d = make_plan().to_dict()
    d["groups"][0]["kept"] = 7
    with pytest.raises(PlanError, match="kept"):
        Plan.from_dict(d)
    assert issubclass(PlanError, UserError)


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    plan = make_plan()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        plan.save(tmp_path / "plan.json")
    assert list(tmp_path.iterdir()) == []
