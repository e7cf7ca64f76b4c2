"""``edgekit search``: the budget is respected, an impossible one exits 1 with the best
latency, bad budgets exit 2 before any work, the outputs are written, and the validation
slice never holds a test, calibration or fine-tuning image."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from edgekit.errors import EdgekitError
from edgekit.search import SearchConfig, find_stages, search, search_splits


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 10-class npz pair (40 train / 4 test images per class, 32x32, every image
    distinct) and an untrained ResNet-8 edgekit checkpoint."""
    import torch

    from edgekit.models import build_model, save_checkpoint

    d = tmp_path_factory.mktemp("search-data")
    rng = np.random.default_rng(0)
    for split, per in (("train", 40), ("test", 4)):
        y = np.repeat(np.arange(10), per)
        base = (y[:, None, None, None] * 25).astype(np.int16)
        x = np.clip(base + rng.integers(-20, 20, (len(y), 32, 32, 3)), 0, 255).astype(np.uint8)
        np.savez(d / f"tiny-{split}.npz", x=x, y=y)
    torch.manual_seed(0)
    w = d / "resnet8.pt"
    save_checkpoint(
        w, build_model("resnet8", 10), "resnet8", 10, classes=[str(i) for i in range(10)]
    )
    return f"npz:{d}", w


def _cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    from edgekit import cli

    monkeypatch.setattr(sys, "argv", ["edgekit", "search", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    return e.value.code, capsys.readouterr().err


FAST = dict(
    finetune_epochs=0,
    train_subset=60,
    val_images=20,
    exporter="torchscript",
    rounds=2,
    min_duration_s=0.2,
)


def test_splits_are_disjoint_and_reproducible():
    y = np.repeat(np.arange(10), 100)
    a = search_splits(y, 8, 200, 500, seed=3, num_classes=10)
    assert len(a["calibration"]) == 80 and len(a["validation"]) == 200
    assert len(a["finetune"]) == 500
    assert not set(a["validation"]) & set(a["calibration"])
    assert not set(a["validation"]) & set(a["finetune"])
    assert np.bincount(y[a["validation"]]).tolist() == [20] * 10  # class-balanced
    b = search_splits(y, 8, 200, 500, seed=3, num_classes=10)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(EdgekitError, match="held-out slice"):
        search_splits(y, 8, 5, 10, seed=0, num_classes=10)


def test_validation_slice_holds_no_test_calibration_or_finetune_image(tiny):
    """Built as the search builds it, for an INT8 target (its calibration images too)."""
    from edgekit.search import _Search

    data, w = tiny
    cfg = SearchConfig(target="ort-cpu-int8", budget_ratio=0.8, val_images=50, train_subset=150)
    s = _Search(cfg, "unused", data, None, None, str(w), None, "cpu", lambda *_: None)
    calib = s.ds.train.x[s.splits["calibration"]]
    assert len(calib) == 320  # ort-cpu-int8 draws 32 per class, as its builder does

    def keys(x):
        return {bytes(im) for im in x}

    val = keys(s.val.x)
    assert len(val) == 50
    assert not val & keys(s.ds.test.x)
    assert not val & keys(s.ft.x)
    assert not val & keys(calib)


def test_stages_of_a_resnet():
    from edgekit.models import build_model

    st = find_stages(build_model("resnet20", 10), round_to=8)
    assert [s.name for s in st] == ["layer1", "layer2", "layer3"]
    assert [s.max_steps for s in st] == [1, 3, 7]  # 16/32/64 channels keep >= 8
    assert all(len(s.layers) == 3 for s in st)


def test_search_respects_the_budget_and_writes_its_outputs(tiny, tmp_path):
    from edgekit.models import load_model

    data, w = tiny
    work = tmp_path / "s"
    logs: list[str] = []
    cfg = SearchConfig(target="ort-cpu", budget_ratio=5.0, trials=2, **FAST)
    rec = search(cfg, work, dataset=data, weights=w, device="cpu", log=logs.append)
    for name in ("search.json", "search.md", "search.png", "model.pt"):
        assert (work / name).is_file(), name
    assert (work / "search.png").read_bytes()[:4] == b"\x89PNG"
    rows = rec["trials"]
    distinct = [r for r in rows if r.get("duplicate_of") is None]
    assert len(distinct) == 2 and rows[0]["uniform"] is not None  # the uniform baseline first
    for r in rows:
        assert r["status"] == "ok"
        assert r["meets_budget"] == (r["latency_ratio"] <= 5.0)
        assert r["macs"] < 0.9 * 10**9
    ch = rec["chosen"]
    feasible = [r for r in rows if r["meets_budget"]]
    assert ch["val_top1"] == max(r["val_top1"] for r in feasible)
    re = ch["remeasured"]
    assert re["meets_budget"] and re["latency_ratio"] <= 5.0 and re["test_images"] == 40
    md = (work / "search.md").read_text()
    assert "**chosen**" in md and "| trial | kind |" in md
    # the chosen model: an edgekit checkpoint (weights_only) carrying the re-measurement
    model, meta = load_model(None, work / "model.pt", None)
    assert meta["search"]["remeasured"]["p50_ms"] == pytest.approx(re["p50_ms"])
    assert meta["search"]["data"]["validation"]["images"] == 20
    widths = [m.out_channels for n, m in model.named_modules() if n.endswith("conv1") and "." in n]
    assert widths == [rows[ch["trial"]]["widths"][f"layer{i}.0.conv1"] for i in (1, 2, 3)]

    # the same command resumes (no trial is redone); other options are refused
    logs.clear()
    again = search(cfg, work, dataset=data, weights=w, device="cpu", log=logs.append)
    assert [r["trial"] for r in again["trials"]] == [r["trial"] for r in rows]
    assert any("already done" in m for m in logs)
    assert not any("steps" in m for m in logs)  # no trial ran again
    other = SearchConfig(target="ort-cpu", budget_ratio=4.0, trials=2, **FAST)
    with pytest.raises(EdgekitError, match="other options"):
        search(other, work, dataset=data, weights=w, device="cpu")


def test_impossible_budget_exits_1_naming_the_best_latency(tiny, tmp_path, monkeypatch, capsys):
    data, w = tiny
    work = tmp_path / "s"
    code, err = _cli(
        monkeypatch, capsys,
        "--weights", w, "-d", data, "-t", "ort-cpu", "-w", work, "--budget-ratio", "0.01",
        "--trials", "1", "--finetune-epochs", "0", "--train-subset", "60",
        "--val-images", "20", "--exporter", "torchscript", "--rounds", "2",
    )  # fmt: skip
    assert code == 1, err
    line = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "no trial met the budget" in line[0], err
    assert " ms = " in line[0] and "x the unpruned" in line[0] and "--budget-ratio" in line[0]
    rec = json.loads((work / "search.json").read_text())
    assert rec["chosen"] is None and not rec["trials"][0]["meets_budget"]
    assert (work / "search.md").is_file() and (work / "search.png").is_file()
    assert not (work / "model.pt").exists()


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--budget-ms", "0"], "--budget-ms must be a positive number"),
        (["--budget-ms", "-1"], "--budget-ms must be a positive number"),
        (["--budget-ratio", "nan"], "--budget-ratio must be a positive number"),
        (["--budget-ratio", "0"], "--budget-ratio must be a positive number"),
        ([], "exactly one latency budget"),
        (["--budget-ms", "1", "--budget-ratio", "0.8"], "exactly one latency budget"),
        (["--budget-ratio", "0.8", "-t", "ort-cpu-int9"], "unknown target 'ort-cpu-int9'"),
        (["--budget-ratio", "0.8", "--trials", "0"], "--trials must be in"),
    ],
)
def test_bad_input_exits_2_before_any_work(tmp_path, monkeypatch, capsys, args, msg):
    work = tmp_path / "s"
    if "-t" not in args:
        args = [*args, "-t", "ort-cpu"]
    code, err = _cli(monkeypatch, capsys, "--weights", tmp_path / "none.pt", "-w", work, *args)
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and msg in lines[0], err
    assert "Traceback" not in err
    assert not work.exists()


def test_a_directory_with_other_files_is_not_overwritten(tiny, tmp_path):
    data, w = tiny
    work = tmp_path / "s"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    cfg = SearchConfig(target="ort-cpu", budget_ratio=0.8, trials=1, **FAST)
    with pytest.raises(EdgekitError, match="not empty"):
        search(cfg, work, dataset=data, weights=w, device="cpu")
    assert (work / "notes.txt").read_text() == "mine"


def test_choice_is_the_most_accurate_trial_within_the_budget(tiny, tmp_path, monkeypatch):
    """Measurements faked (pruning more is faster and less accurate), so the rule is
    tested exactly: the most accurate *feasible* trial is chosen, never a more accurate
    one over the budget, and one that misses on re-measurement gives way to the next."""
    from edgekit import search as S

    data, w = tiny

    def fake_trial(self, number, steps, ref):
        cut = sum(steps.values()) / sum(st.max_steps for st in self.stages)
        ratio = 1.0 - 0.5 * cut
        return {
            "trial": number, "status": "ok", "steps": dict(steps),
            "stage_ratios": {k: float(v) for k, v in steps.items()}, "widths": {},
            "macs": 1e6, "params": 1, "macs_reduction": cut, "val_top1": 90 - 20 * cut,
            "ref_val_top1": 90.0, "p50_ms": ratio, "ref_p50_ms": 1.0, "latency_ratio": ratio,
            "latency_ratio_range": [ratio, ratio], "noisy": False, "size_mb": 1.0,
            "dir": f"trials/t{number:03d}", "seconds": 0.0,
        }  # fmt: skip

    rows_by_dir = {}
    first = []

    def fake_measure(self, ref, art, test=None, scale=1.0):
        trial = int(art.parent.parent.name[1:])
        r = rows_by_dir[trial]
        slow = not first  # the best candidate misses the budget when measured again
        first.append(trial)
        p50 = 0.95 if slow else r["latency_ratio"]
        lat = {"p50": p50, "p90": p50, "rounds": 2, "rounds_p50": [p50, p50]}
        ref_lat = {"p50": 1.0, "p90": 1.0, "rounds": 2, "rounds_p50": [1.0, 1.0]}
        return {"top1": 91.0, "latency_ms": ref_lat}, {"top1": 80.0, "latency_ms": lat}

    def recording_trial(self, number, steps, ref):
        row = fake_trial(self, number, steps, ref)
        rows_by_dir[number] = row
        return row

    monkeypatch.setattr(S._Search, "run_trial", recording_trial)
    monkeypatch.setattr(S._Search, "measure", fake_measure)
    monkeypatch.setattr(S._Search, "reference", lambda self: tmp_path / "ref")
    monkeypatch.setattr(S, "_save_chosen", lambda *a: None)
    cfg = SearchConfig(target="ort-cpu", budget_ratio=0.8, trials=8, **FAST)
    rec = search(cfg, tmp_path / "s", dataset=data, weights=w, device="cpu", log=lambda *_: None)
    rows = rec["trials"]
    distinct = [r for r in rows if r.get("duplicate_of") is None]
    assert len(distinct) == 8 and len({tuple(sorted(r["steps"].items())) for r in distinct}) == 8
    feasible = sorted(
        (r for r in distinct if r["latency_ratio"] <= 0.8), key=lambda r: -r["val_top1"]
    )
    assert len(feasible) >= 2 and any(r["latency_ratio"] > 0.8 for r in rows)
    assert all(r["meets_budget"] == (r["latency_ratio"] <= 0.8) for r in rows)
    # the most accurate feasible trial missed on re-measurement; the next one was chosen
    assert [m["trial"] for m in rec["remeasured"]] == first[:2]
    assert first[0] == feasible[0]["trial"]
    assert rec["chosen"]["trial"] == feasible[1]["trial"]
    assert rec["chosen"]["val_top1"] < max(r["val_top1"] for r in rows)  # infeasible ones win
    front = [r for r in rows if r["pareto"]]
    assert front and all(
        not any(
            o["latency_ratio"] < r["latency_ratio"] and o["val_top1"] > r["val_top1"] for o in rows
        )
        for r in front
    )


def test_depth_search_drops_blocks_and_enqueues_uniform_depth(tiny, tmp_path):
    """--depth: the uniform depth (the last block of every stage) is enqueued after the
    uniform ratios; its trial drops those blocks, is lowered and measured, and its
    checkpoint records them (weights_only load through the structure's Identity entries)."""
    import torch

    from edgekit.models import build_model, load_model, save_checkpoint

    data, _ = tiny
    torch.manual_seed(0)
    w = tmp_path / "r20.pt"
    save_checkpoint(w, build_model("resnet20", 10), "resnet20", 10, classes=list("0123456789"))
    cfg = SearchConfig(target="ort-cpu", budget_ratio=5.0, trials=3, depth=True, uniform=1, **FAST)
    rec = search(cfg, tmp_path / "s", dataset=data, weights=w, device="cpu", log=lambda *_: None)
    rows = [r for r in rec["trials"] if r.get("duplicate_of") is None]
    assert [r["uniform"] for r in rows[:3]] == [rows[0]["uniform"], "depth 1", "depth 2"]
    d1, d2 = rows[1], rows[2]
    assert d1["status"] == d2["status"] == "ok"
    assert d1["dropped"] == ["layer1.2", "layer2.2", "layer3.2"]
    assert d2["dropped"] == ["layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]
    assert rows[0]["dropped"] == [] and d2["macs"] < d1["macs"] < 0.7 * 41e6
    from edgekit.prune import model_stats

    base = model_stats(build_model("resnet20", 10), torch.zeros(1, 3, 32, 32))["macs"]
    assert d1["macs_reduction"] == pytest.approx(1 - d1["macs"] / base, abs=1e-3)  # vs the base
    assert "dropped layer1.2" in (tmp_path / "s" / "search.md").read_text()
    model, meta = load_model(None, tmp_path / "s" / "model.pt", None)
    chosen = rec["chosen"]
    for name in chosen["dropped"]:
        assert isinstance(model.get_submodule(name), torch.nn.Identity)
