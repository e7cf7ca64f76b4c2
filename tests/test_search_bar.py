"""benchmarks/search.py's verdict on issue 17's search bar (pure logic, no model)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "search.py"


@pytest.fixture(scope="module")
def bar():
    spec = importlib.util.spec_from_file_location("edgekit_bench_search", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.bar


def _row(trial, kind, uniform, top1, ratio):
    return {
        "trial": trial,
        "kind": kind,
        "uniform": uniform,
        "test_top1": top1,
        "latency_ratio": ratio,
    }


def test_a_tpe_choice_must_beat_the_best_uniform_under_the_budget(bar):
    rows = [
        _row(9, "chosen", None, 80.0, 0.79),
        _row(3, "uniform", "depth 1", 70.0, 0.70),
        _row(4, "uniform", "depth 2", 81.0, 0.41),  # the best uniform, not the first
    ]
    b = bar(rows, 0.8)
    assert b["chosen_meets_budget"] and b["best_uniform_trial"] == 4
    assert b["beats_uniform"] is False and b["met"] is False
    assert b["margin_points"] == -1.0
    rows[0]["test_top1"] = 82.5
    b = bar(rows, 0.8)
    assert b["beats_uniform"] is True and b["met"] is True
    assert b["margin_points"] == 1.5
    # two binomial standard errors on 10,000 images at ~82%: about 0.38 points each
    assert 0.5 < b["se_points"] < 0.6


def test_a_chosen_model_over_the_budget_on_re_measurement_fails_the_bar(bar):
    rows = [_row(9, "chosen", None, 90.0, 0.81), _row(3, "uniform", "depth 1", 70.0, 0.70)]
    b = bar(rows, 0.8)
    assert b["beats_uniform"] is True and not b["chosen_meets_budget"] and b["met"] is False


def test_a_uniform_choice_never_beats_uniform(bar):
    rows = [_row(3, "chosen", "depth 1", 70.0, 0.70), _row(4, "uniform", "depth 2", 12.0, 0.41)]
    b = bar(rows, 0.8)
    assert b["chosen_is_uniform"] and b["beats_uniform"] is False and b["met"] is False
    b = bar(rows[:1], 0.8)
    assert b["beats_uniform"] is False and b["met"] is False


def test_no_uniform_baseline_under_the_budget_is_not_a_win(bar):
    b = bar([_row(9, "chosen", None, 80.0, 0.75)], 0.8)
    assert b["beats_uniform"] is None and b["met"] is False
    assert b["best_uniform_test_top1"] is None and b["margin_points"] is None
    b = bar([], 0.8)  # nothing met the budget in the search
    assert b["chosen_meets_budget"] is False and b["beats_uniform"] is None and not b["met"]
