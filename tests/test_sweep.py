"""``edgekit sweep`` writes its report after every ratio, resumes, and turns failures into rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import edgekit.pipeline
from edgekit.errors import EdgekitError
from edgekit.harness import BenchConfig
from edgekit.pipeline import ModelSpec
from edgekit.sweep import sweep


class FakeRun:
    """Stands in for :func:`edgekit.pipeline.run` (minutes each) with the same contract:
    it writes WORK/rR/edgekit.json and model.pt and returns one row per target."""

    def __init__(self, interrupt_at=None, fail_at=None):
        self.calls: list[float] = []
        self.interrupt_at, self.fail_at = interrupt_at, fail_at

    def __call__(self, spec, work, *, targets=None, target_files=None, cfg=None, threads=None,
                 force=False, log=print, show_progress=False):  # fmt: skip
        r = spec.prune_ratio or 0.0
        self.calls.append(r)
        work = Path(work)
        if work.exists() and not force:
            raise EdgekitError(f"{work} already holds artifacts")
        work.mkdir(parents=True, exist_ok=True)
        if r == self.interrupt_at:
            (work / "half-done").write_text("")
            raise KeyboardInterrupt
        if r == self.fail_at:
            raise EdgekitError("pruning would empty layer1.conv1", "lower the ratio")
        (work / "model.pt").write_text("weights")
        pruning = {
            "before": {"macs": 100, "params": 10},
            "after": {"macs": 100 * (1 - r), "params": 5},
        }
        (work / "edgekit.json").write_text(json.dumps({"pruning": pruning if r else None}))
        return [
            {"target": t, "status": "ok", "top1": 90 - 10 * r, "latency_ms": {"p50": 1 - r},
             "size_mb": 1 - r}
            for t in targets
        ]  # fmt: skip


def test_a_killed_sweep_resumes_without_redoing_finished_ratios(tmp_path, monkeypatch):
    spec = ModelSpec(dataset="digits", model="resnet8")
    work = tmp_path / "sweep"
    killed = FakeRun(interrupt_at=0.5)
    monkeypatch.setattr(edgekit.pipeline, "run", killed)
    args = dict(targets=["ort-cpu"], cfg=BenchConfig.quick(), log=lambda *_: None)
    with pytest.raises(KeyboardInterrupt):
        sweep(spec, work, [0, 0.3, 0.5, 0.7], **args)
    assert killed.calls == [0, 0.3, 0.5]
    rows = json.loads((work / "sweep.json").read_text())  # written after the second ratio
    assert [r["pruning_ratio"] for r in rows] == [0, 0.3]
    assert "| 0.3 | ort-cpu | ok |" in (work / "sweep.md").read_text()

    resumed = FakeRun()
    monkeypatch.setattr(edgekit.pipeline, "run", resumed)
    logs: list[str] = []
    rows = sweep(spec, work, [0, 0.3, 0.5, 0.7], **{**args, "log": logs.append})
    assert resumed.calls == [0.5, 0.7]  # the first two are not redone; 0.5 is redone
    assert any("already done" in m and "0, 0.3" in m for m in logs)
    assert [r["pruning_ratio"] for r in rows] == [0, 0.3, 0.5, 0.7]
    assert rows[0]["macs"] == 100 and rows[2]["macs"] == 50  # unpruned row: the base MACs
    assert all(r["status"] == "ok" for r in rows)  # r0.5, cut short, was redone in place

    # the same command once more: nothing left to do
    again = FakeRun()
    monkeypatch.setattr(edgekit.pipeline, "run", again)
    assert len(sweep(spec, work, [0, 0.3, 0.5, 0.7], **args)) == 4 and again.calls == []
    # other options: refused before anything is written, unless --force
    with pytest.raises(EdgekitError, match="other options"):
        sweep(spec, work, [0, 0.3], **{**args, "targets": ["ort-cpu-int8"]})
    sweep(spec, work, [0, 0.3], **{**args, "force": True})
    assert again.calls == [0, 0.3]


def test_a_failing_ratio_is_a_row_not_an_abort(tmp_path, monkeypatch):
    fake = FakeRun(fail_at=0.7)
    monkeypatch.setattr(edgekit.pipeline, "run", fake)
    rows = sweep(
        ModelSpec(dataset="digits", weights=str(tmp_path / "w.pt")),
        tmp_path / "s",
        [0.3, 0.7, 0.9],
        targets=["ort-cpu"],
        log=lambda *_: None,
    )
    assert fake.calls == [0.3, 0.7, 0.9]
    failed = [r for r in rows if r["status"] == "failed"]
    assert [r["pruning_ratio"] for r in failed] == [0.7]
    assert "empty layer1.conv1" in failed[0]["reason"]
    assert "| 0.7 | - | failed |" in (tmp_path / "s" / "sweep.md").read_text()


def test_bad_sweep_input_writes_nothing(tmp_path):
    spec = ModelSpec(dataset="digits")
    for ratios, targets, match in (
        ([0, 1.0], None, "outside"),
        ([0.3], ["ort-cpu-in8"], "unknown target"),
    ):
        with pytest.raises(EdgekitError, match=match):
            sweep(spec, tmp_path / "s", ratios, targets=targets)
    assert not (tmp_path / "s").exists()
