"""Low-rank (SVD) factorization and the channel technique (issue 17, edgekit.compress)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.compress import get_technique
from edgekit.compress.lowrank import factorize_conv, parse_ranks
from edgekit.errors import EdgekitError
from edgekit.layers import LowRankConv2d

REPO = Path(__file__).resolve().parents[1]
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
EXAMPLE = torch.zeros(1, 3, 32, 32)
#: the weight SVD: these tests probe the model with one zero image, and the default method
#: (responses, tests/test_lowrank_responses.py) needs training images
WEIGHTS = {"method": "weights"}


def _resnet8():
    from edgekit.models import build_model

    torch.manual_seed(0)
    return build_model("resnet8", 10).eval()


def _macs(model) -> int:
    from edgekit.prune import model_stats

    return model_stats(model, EXAMPLE)["macs"]


def test_full_rank_reproduces_the_convolution():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=1, bias=True).eval()
    x = torch.randn(2, 6, 15, 15)
    f = factorize_conv(conv, min(10, 6 * 9))
    assert isinstance(f, LowRankConv2d) and f.rank == 10
    assert f.reduce.bias is None and f.expand.bias is not None  # the bias goes on the 1x1
    torch.testing.assert_close(f(x), conv(x), atol=1e-5, rtol=1e-4)
    # a truncated rank is the best rank-r approximation: its error grows as r shrinks
    errs = [(factorize_conv(conv, r)(x) - conv(x)).abs().mean().item() for r in (8, 4, 1)]
    assert errs == sorted(errs) and errs[0] > 0
    with pytest.raises(EdgekitError, match=r"rank 11 is outside \[1, 10\]"):
        factorize_conv(conv, 11)


def test_truncated_ranks_lower_the_macs_as_computed():
    m = _resnet8()
    tech = get_technique("lowrank")
    ranks = {"layer1.0.conv1": 4, "layer2.0.conv2": 8}
    before = _macs(m)
    rec = tech.apply(m, EXAMPLE, None, {**WEIGHTS, "ranks": ranks}, lambda *_: None)
    assert isinstance(m.get_submodule("layer1.0.conv1"), LowRankConv2d)
    # k x k conv of rank r then 1x1: r * (C*k*k + N) MACs per output position (32x32 in
    # stage 1, 16x16 in stage 2) instead of N*C*k*k
    saved = 32 * 32 * (16 * 16 * 9 - 4 * (16 * 9 + 16)) + 16 * 16 * (
        32 * 32 * 9 - 8 * (32 * 9 + 32)
    )
    assert before - _macs(m) == saved
    assert rec["macs_reduction"] == pytest.approx(saved / before)
    assert rec["ranks"] == ranks and rec["layers_factorized"] == 2


def test_ranks_are_rounded_to_multiples_of_8_by_default():
    """INT8 CPU kernels want channel counts in multiples of 4-8 (MLAS ConvSym needs input
    channels % 4 == 0): by default every chosen rank is a multiple of 8 or the full rank,
    and the level is still reached."""
    m = _resnet8()
    before = _macs(m)
    rec = get_technique("lowrank").apply(m, EXAMPLE, 0.3, WEIGHTS, lambda *_: None)
    assert rec["round_to"] == 8 and rec["ranks"]
    assert all(r % 8 == 0 or r == rec["full_ranks"][n] for n, r in rec["ranks"].items())
    assert 1 - _macs(m) / before >= 0.3
    exact = get_technique("lowrank").apply(
        _resnet8(), EXAMPLE, 0.3, {**WEIGHTS, "round_to": 1}, print
    )
    assert any(r % 8 for r in exact["ranks"].values())  # the rounding did something
    for bad in (0, -8, 2.5, True):
        with pytest.raises(EdgekitError, match="round_to"):
            get_technique("lowrank").check(0.3, {"round_to": bad})


@pytest.mark.parametrize("level", [0.3, 0.5])
def test_the_level_search_reaches_the_asked_macs(level):
    m = _resnet8()
    before = _macs(m)
    opts = {"round_to": 1}  # exact ranks: the search can land close to the level
    rec = get_technique("lowrank").apply(m, EXAMPLE, level, {**WEIGHTS, **opts}, lambda *_: None)
    cut = 1 - _macs(m) / before
    assert level <= cut < level + 0.05, cut
    assert 0 < rec["energy_threshold"] < 1
    assert "conv1" not in rec["ranks"]  # the first conv is skipped unless asked
    with torch.no_grad():
        assert torch.isfinite(m(X)).all()


def test_an_unreachable_level_and_bad_ranks_are_refused_naming_the_layer():
    tech = get_technique("lowrank")
    m = _resnet8()
    with pytest.raises(EdgekitError, match="cannot be reached"):
        tech.apply(copy.deepcopy(m), EXAMPLE, 0.99, WEIGHTS, lambda *_: None)
    with pytest.raises(
        EdgekitError, match=r"layer1.0.conv1 is outside the allowed range \[1, 16\]"
    ):
        tech.apply(
            copy.deepcopy(m), EXAMPLE, None, {**WEIGHTS, "ranks": {"layer1.0.conv1": 17}}, print
        )
    with pytest.raises(EdgekitError, match="cannot factorize layer 'conv1'.*first"):
        tech.apply(copy.deepcopy(m), EXAMPLE, None, {**WEIGHTS, "ranks": {"conv1": 2}}, print)
    with pytest.raises(EdgekitError, match="cannot factorize layer 'nope': no such layer"):
        tech.apply(copy.deepcopy(m), EXAMPLE, None, {**WEIGHTS, "ranks": {"nope": 2}}, print)
    for level, opts, match in (
        (0.0, {}, "outside"),
        (1.0, {}, "outside"),
        (float("nan"), {}, "outside"),
        (None, {}, "needs"),
        (None, {"energy": 1.5}, "energy"),
        (0.5, {"energy": 0.9}, "not both"),
        (None, {"ranks": {"layer1.0.conv1": 0}}, "layer1.0.conv1 is outside the allowed range"),
        (0.5, {"rank": 3}, "unknown lowrank option"),
    ):
        with pytest.raises(EdgekitError, match=match):
            tech.check(level, opts)
    with pytest.raises(EdgekitError, match="NAME=RANK"):
        parse_ranks("layer1.0.conv1=2.5")


def test_a_factorized_checkpoint_round_trips_with_weights_only(tmp_path):
    from edgekit.models import load_model, read_checkpoint, save_checkpoint

    m = _resnet8()
    get_technique("lowrank").apply(m, EXAMPLE, 0.4, WEIGHTS, lambda *_: None)
    path = save_checkpoint(tmp_path / "f.pt", m, "resnet8", 10)
    obj = torch.load(path, weights_only=True)
    entries = obj["structure"]
    assert entries and all(a["type"] == "LowRankConv2d" for a in entries.values())
    assert not any(".reduce" in n or ".expand" in n for n in entries)  # implied by the entry
    loaded, _ = load_model(None, path, None)
    with torch.no_grad():
        assert torch.equal(loaded(X), m(X))
    assert read_checkpoint(path)["structure"] == entries


def test_a_hostile_lowrank_structure_entry_is_refused_before_allocation(tmp_path):
    from edgekit.models import load_model, save_checkpoint

    m = _resnet8()
    get_technique("lowrank").apply(
        m, EXAMPLE, None, {**WEIGHTS, "ranks": {"layer1.0.conv1": 4}}, print
    )
    path = save_checkpoint(tmp_path / "f.pt", m, "resnet8", 10)
    obj = torch.load(path, weights_only=True)
    for entry, match in (
        # a rank the tensors do not have: 65,536 x 16 x 3 x 3 would be allocated
        ({"type": "LowRankConv2d", "in": 16, "out": 16, "rank": 65536}, "should be"),
        ({"type": "LowRankConv2d", "in": 16, "out": 16, "rank": 10**9}, "structure"),
        ({"type": "LowRankConv2d", "in": 16, "out": 16, "rank": 0}, "structure"),
        ({"type": "LowRankConv2d", "in": 16, "out": 16}, "structure"),
    ):
        bad = copy.deepcopy(obj)
        bad["structure"]["layer1.0.conv1"] = entry
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(EdgekitError, match=match):
            load_model(None, tmp_path / "bad.pt", None)
    bad = copy.deepcopy(obj)  # a LowRankConv2d where the model has a BatchNorm
    bad["structure"]["bn1"] = {"type": "LowRankConv2d", "in": 3, "out": 16, "rank": 2}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(EdgekitError, match="is a LowRankConv2d, the model has BatchNorm2d"):
        load_model(None, tmp_path / "bad.pt", None)


def test_a_factorized_model_exports_to_onnx_and_runs_in_onnxruntime(tmp_path):
    import onnxruntime as ort

    from edgekit.export import export_onnx

    m = _resnet8()
    get_technique("lowrank").apply(m, EXAMPLE, 0.5, WEIGHTS, lambda *_: None)
    x = X.numpy()
    check = export_onnx(m, x, tmp_path / "m.onnx", exporter="torchscript", force=True)
    assert check.passed
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), so, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, m(X).numpy(), atol=1e-4, rtol=1e-3)


def test_the_channel_technique_wraps_edgekit_prune():
    m = _resnet8()
    tech = get_technique("channel")
    before = _macs(m)
    rec = tech.apply(m, EXAMPLE, 0.3, {"round_to": 1}, lambda *_: None)
    assert 1 - _macs(m) / before >= 0.3 and rec["macs_reduction"] >= 0.3
    for level, opts, match in (
        (1.0, {}, "outside"),
        (0.5, {"importance": "taylor"}, "Taylor"),
        (0.5, {"by": "channels"}, "unknown"),
    ):
        with pytest.raises(EdgekitError, match=match):
            tech.check(level, opts)


def _edgekit(*args):
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _user_error(res, pattern):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and pattern in lines[0], res.stderr


def test_factorize_cli_bad_input_exits_2_with_one_line(tmp_path, tiny_npz, tiny_workspace):
    w = tiny_workspace.root / "model.pt"
    ds = f"npz:{tiny_npz}"
    for args, pattern in (
        # (the other refusals are checked in-process above; each CLI call costs seconds)
        (["--macs", "1.5"], "MACs reduction 1.5 is outside (0, 1)"),
        (["--ranks", "layer1.0.conv1=0"], "layer1.0.conv1 is outside the allowed range"),
        (["--ranks", "layer1.0.conv1=99"], "outside the allowed range [1, 16]"),
    ):
        _user_error(_edgekit("factorize", "--weights", w, "-o", tmp_path / "o", "-d", ds, *args),
                    pattern)  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_factorize_cli_writes_a_checkpoint_that_loads(tmp_path, tiny_npz, tiny_workspace):
    from edgekit.models import load_model

    out = tmp_path / "f"
    res = _edgekit("factorize", "--weights", tiny_workspace.root / "model.pt", "-o", out,
                   "-d", f"npz:{tiny_npz}", "--macs", "0.4")  # fmt: skip
    assert res.returncode == 0, res.stderr
    m, meta = load_model(None, out / "model.pt", None)
    rec = meta["compression"]
    assert rec["technique"] == "lowrank" and rec["level"] == 0.4
    assert 1 - rec["after"]["macs"] / rec["before"]["macs"] >= 0.4
    assert any(isinstance(x, LowRankConv2d) for x in m.modules())
    res = _edgekit("factorize", "--weights", tiny_workspace.root / "model.pt", "-o", out,
                   "-d", f"npz:{tiny_npz}", "--macs", "0.4")  # fmt: skip
    assert res.returncode == 2 and "--force" in res.stderr  # never overwritten silently


def test_sweep_with_technique_lowrank_runs_the_pipeline(tmp_path, tiny_npz, tiny_workspace):
    from edgekit.harness import BenchConfig
    from edgekit.pipeline import ModelSpec
    from edgekit.sweep import sweep

    spec = ModelSpec(
        dataset=f"npz:{tiny_npz}",
        weights=str(tiny_workspace.root / "model.pt"),
        exporter="torchscript",
        prune_options={"finetune_epochs": 0},
    )
    cfg = BenchConfig(
        warmup_queries=2, min_queries=5, min_duration_s=0.0, batch_sizes=(1,), throughput_min_s=0.0
    )
    work = tmp_path / "s"
    rows = sweep(
        spec, work, [0, 0.5], techniques=["lowrank"], targets=["ort-cpu"], cfg=cfg, threads=1,
        log=lambda *_: None,
    )  # fmt: skip
    assert [(r["technique"], r["pruning_ratio"], r["status"]) for r in rows] == [
        ("none", 0, "ok"),
        ("lowrank", 0.5, "ok"),
    ]
    ref, svd = rows
    assert svd["macs"] <= 0.5 * ref["macs"]
    rec = json.loads((work / "lowrank-r0.5" / "edgekit.json").read_text())
    assert rec["compression"]["technique"] == "lowrank"
    assert "| lowrank | 0.5 | ort-cpu | ok |" in (work / "sweep.md").read_text()
    assert (work / "sweep.png").stat().st_size > 0
    with pytest.raises(EdgekitError, match="other options"):  # the technique is in the fingerprint
        sweep(spec, work, [0, 0.5], techniques=["channel"], targets=["ort-cpu"], cfg=cfg,
              threads=1, log=lambda *_: None)  # fmt: skip
    with pytest.raises(EdgekitError, match="unknown compression technique"):
        sweep(spec, tmp_path / "t", [0.5], techniques=["svd"], log=lambda *_: None)


def test_run_compress_bad_input_exits_2_before_any_work(tmp_path):
    for spec, pattern in (
        ("svd:0.5", "unknown compression technique 'svd'"),
        ("lowrank:1.5", "MACs reduction 1.5 is outside (0, 1)"),
    ):
        _user_error(_edgekit("run", "--compress", spec, "-w", tmp_path / "w"), pattern)
    assert not (tmp_path / "w").exists()
