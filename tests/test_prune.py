"""Structured pruning: shapes shrink, MACs drop, save/load/export, and clear errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.errors import EdgekitError
from edgekit.models import build_model, load_model, save_checkpoint
from edgekit.prune import PruneConfig, model_stats, prune_model

X = torch.randn(1, 3, 32, 32)


def _inner_widths(m):
    return [c.out_channels for n, c in m.named_modules() if n.endswith(".conv1")]


def test_uniform_prune_shrinks_inner_widths_and_macs():
    m = build_model("resnet20", 10)
    res = prune_model(m, X, PruneConfig(ratio=0.5, round_to=8))
    # option-A model: only the block-internal width is pruned, stage widths stay
    assert _inner_widths(m) == [8] * 3 + [16] * 3 + [32] * 3
    assert [b.conv2.out_channels for b in m.layer3] == [64] * 3
    assert m.layer1[0].conv2.weight.shape == (16, 8, 3, 3)
    assert m.linear.weight.shape == (10, 64)  # classifier ignored
    # block MACs halve; the stem conv (0.44M) and the classifier do not
    assert 0.48 < res.macs_reduction < 0.50
    assert res.after["params"] < 0.52 * res.before["params"]
    assert m(X).shape == (1, 10)


def test_coupled_pruning_of_projection_resnet():
    m = build_model("resnet18", 10)
    # an 8x8 input keeps tracing cheap; every conv's MACs scale with H*W alike
    res = prune_model(m, torch.randn(1, 3, 8, 8), PruneConfig(ratio=0.5, round_to=8))
    # DepGraph prunes the residual stream together with the downsample convs
    assert m.conv1.out_channels == 32 and m.layer4[0].downsample[0].out_channels == 256
    assert m.fc.in_features == 256 and m.fc.out_features == 10
    assert 0.70 < res.macs_reduction < 0.78  # both in and out channels halve: ~x0.25
    assert all(
        c % 8 == 0 for c in (mm.out_channels for mm in m.modules() if isinstance(mm, nn.Conv2d))
    )


def test_macs_target_is_reached():
    m = build_model("resnet8", 10)
    x16 = torch.randn(1, 3, 16, 16)  # the bisection prunes ~15 copies: keep them cheap
    res = prune_model(m, x16, PruneConfig(ratio=0.5, by="macs", round_to=None))
    assert res.macs_reduction >= 0.5
    assert res.macs_reduction < 0.56


def test_iterative_schedule_reaches_target_and_finetunes_between_steps():
    m = build_model("resnet8", 10)
    calls = []
    res = prune_model(
        m, X, PruneConfig(ratio=0.5, steps=4, round_to=None), finetune=lambda mm, s: calls.append(s)
    )
    assert calls == [0, 1, 2]  # between steps only
    macs = [s["macs"] for s in res.steps]
    assert len(macs) == 4 and all(a > b for a, b in zip(macs, macs[1:], strict=False))
    assert _inner_widths(m) == [8, 16, 32]
    one = build_model("resnet8", 10)
    prune_model(one, X, PruneConfig(ratio=0.5, round_to=None))
    assert res.after["macs"] == model_stats(one, X)["macs"]


@pytest.mark.parametrize("imp", ["l1", "bn", "taylor"])
def test_importances(imp):
    m = build_model("resnet8", 10)
    batch = (torch.randn(8, 3, 32, 32), torch.arange(8) % 10)
    prune_model(m, X, PruneConfig(ratio=0.5, importance=imp), taylor_batch=batch)
    assert _inner_widths(m) == [8, 16, 32]


def test_per_layer_ratio():
    m = build_model("resnet8", 10)
    prune_model(m, X, PruneConfig(ratio=0.0, per_layer={"layer3.0.conv1": 0.75}))
    assert _inner_widths(m) == [16, 32, 16]


def test_pruned_model_saves_loads_weights_only_and_exports(tmp_path):
    from edgekit.export import export_onnx

    m = build_model("resnet8", 10).eval()
    for mod in m.modules():  # non-trivial BN statistics
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    prune_model(m, X, PruneConfig(ratio=0.5))
    p = save_checkpoint(tmp_path / "p.pt", m, "resnet8", 10)
    # plain load_state_dict into the unpruned architecture fails...
    sd = torch.load(p, weights_only=True)["state_dict"]
    with pytest.raises(RuntimeError, match="size mismatch"):
        build_model("resnet8", 10).load_state_dict(sd)
    # ...the edgekit checkpoint rebuilds the pruned shapes (weights_only=True inside)
    m2, meta = load_model(None, p, None)
    assert meta["structure"]["layer1.0.conv1"]["out"] == 8
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m2(x), m(x))
    xs = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    check = export_onnx(m2, xs, tmp_path / "p.onnx", exporter="torchscript", force=True)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: xs})[0]
    with torch.no_grad():
        want = m2(torch.from_numpy(xs)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert check.top1_agreement == 1.0


@pytest.mark.parametrize(
    "cfg, match",
    [
        (PruneConfig(ratio=1.0), r"outside \[0, 1\)"),
        (PruneConfig(ratio=-0.1), r"outside \[0, 1\)"),
        (PruneConfig(ratio=0.2, per_layer={"layer1.0.conv1": 1.0}), r"outside \[0, 1\)"),
        (PruneConfig(ratio=0.5, importance="magic"), "unknown importance 'magic'"),
        (
            PruneConfig(ratio=0.6, round_to=8),
            "remove all 16 output channels of layer 'layer1.0.conv1'",
        ),
        (PruneConfig(ratio=0.2, per_layer={"nope": 0.5}), "unknown layer"),
    ],
)
def test_bad_config_errors(cfg, match):
    m = build_model("resnet8", 10)
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(EdgekitError, match=match):
        prune_model(m, X, cfg)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


class _Numpy(nn.Module):
    def forward(self, x):
        return torch.from_numpy(x.numpy() * 1.0)


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.weird = _Numpy()
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.weird(self.conv(x)).mean((2, 3)))


def test_untraceable_model_names_the_module():
    with pytest.raises(EdgekitError, match=r"module 'weird' \(_Numpy\)"):
        prune_model(_Untraceable(), X, PruneConfig(ratio=0.5))


def test_cli_prune_raises_user_error(tmp_path):
    from typer.testing import CliRunner

    from edgekit.cli import app

    ck = save_checkpoint(tmp_path / "m.pt", build_model("resnet8", 10), "resnet8", 10)
    r = CliRunner().invoke(
        app, ["prune", "--weights", str(ck), "--out", str(tmp_path / "o.pt"), "--ratio", "1.5"]
    )
    # main() turns EdgekitError into one "error:" line and exit status 2
    assert isinstance(r.exception, EdgekitError)
    assert "outside [0, 1)" in str(r.exception)
    # feature distillation needs the teacher that --distill provides; nothing is written
    r = CliRunner().invoke(
        app,
        ["prune", "--weights", str(ck), "--out", str(tmp_path / "o.pt"), "--kd-features", "100"],
    )
    assert isinstance(r.exception, EdgekitError) and "needs --distill" in str(r.exception)
    assert not (tmp_path / "o.pt").exists()


def test_recalibrate_bn_replaces_stale_statistics():
    from edgekit.data import Split
    from edgekit.preprocess import Preprocess
    from edgekit.prune import recalibrate_bn

    m = build_model("resnet8", 10).eval()
    for mod in m.modules():  # stale statistics, as after pruning the layer before
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.fill_(5.0)
            mod.running_var.fill_(9.0)
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8), np.arange(24) % 10)
    pre = Preprocess(32, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    w = m.conv1.weight.clone()
    assert recalibrate_bn(m, split, pre, batch=24) == 24
    assert not m.training and m.bn1.momentum == 0.1  # restored
    torch.testing.assert_close(m.conv1.weight, w)  # weights untouched
    # the first BN sees conv1(x): its statistics are now those of the images
    with torch.no_grad():
        a = m.conv1(torch.from_numpy(pre.apply(split.x)))
    torch.testing.assert_close(m.bn1.running_mean, a.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m.bn1.running_var, a.var((0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_recalibrate_bn_on_augmented_images_sees_the_crop_padding():
    from edgekit.data import Split
    from edgekit.preprocess import Preprocess
    from edgekit.prune import recalibrate_bn
    from edgekit.train import augment

    m = build_model("resnet8", 10).eval()
    split = Split(np.full((24, 32, 32, 3), 200, np.uint8), np.arange(24) % 10)
    pre = Preprocess(32, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    recalibrate_bn(m, split, pre, batch=24, augment=(4, True))
    # the same seeded crops (zero borders) by hand: the first BN's mean is theirs
    gen = torch.Generator().manual_seed(0)
    xa = augment(torch.from_numpy(split.x).permute(0, 3, 1, 2), 4, True, gen)
    with torch.no_grad():
        a = m.conv1(torch.from_numpy(pre.apply(xa.permute(0, 2, 3, 1).numpy())))
        plain = m.conv1(torch.from_numpy(pre.apply(split.x)))
    torch.testing.assert_close(m.bn1.running_mean, a.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(m.bn1.running_mean, plain.mean((0, 2, 3)), atol=1e-3)


def test_finetune_budget_in_minutes_and_the_device_are_recorded(tiny_npz, tmp_path):
    import time

    from edgekit.models import read_checkpoint
    from edgekit.prune import finetune_config, prune_checkpoint

    # the CLI's two budgets: epochs, or wall-clock minutes with as many epochs as fit
    cfg = finetune_config(None, None, 0.05)
    assert cfg.time_budget_s == 3.0 and cfg.epochs >= 10**6 and cfg.lr == 0.01
    assert finetune_config("cifar-fast", 2, None, 0.03).nesterov
    assert finetune_config(None, 2, None).time_budget_s is None
    with pytest.raises(EdgekitError, match="--finetune-minutes must be > 0"):
        finetune_config(None, None, 0)

    src = tmp_path / "m.pt"
    save_checkpoint(src, build_model("resnet8", 10), "resnet8", 10)
    t = time.perf_counter()
    prune_checkpoint(
        str(src),
        str(tmp_path / "p.pt"),
        f"npz:{tiny_npz}",
        PruneConfig(ratio=0.5, round_to=1),
        finetune_epochs=None,
        finetune_minutes=0.05,
        device="auto",
        log=lambda *_: None,
    )
    took = time.perf_counter() - t
    meta = read_checkpoint(tmp_path / "p.pt")
    want = "cpu" if not torch.cuda.is_available() else meta["device"]
    assert meta["device"] == want
    hist = meta["history"]
    # the budget, not an epoch count, ended fine-tuning: it ran until about 3 s had
    # passed and stopped within an epoch of that (epochs are slow on a loaded machine,
    # so the bound is in epochs, not seconds)
    secs = [h["seconds"] for h in hist]
    longest = max(b - a for a, b in zip([0.0, *secs], secs, strict=False))
    assert len(hist) >= 1 and secs[-1] >= 2.5
    assert secs[-1] <= 3.0 + 2 * longest + 0.5 and took < 30 + 2 * longest
    assert meta["finetune_config"]["time_budget_s"] == 3.0


def test_unreachable_macs_target_fails_fast_with_the_reachable_range(monkeypatch):
    """Issue 15: `--by macs --ratio 0.5` with round_to 8 on ResNet-20 failed after minutes."""
    import edgekit.prune as P

    passes = []
    real = P._one_pass
    monkeypatch.setattr(P, "_one_pass", lambda *a, **k: passes.append(1) or real(*a, **k))
    m = build_model("resnet20", 10)
    with pytest.raises(EdgekitError, match=r"cannot be reached: at most 4\d\.\d% .*round_to=8"):
        prune_model(m, X, PruneConfig(ratio=0.5, by="macs", round_to=8))
    assert len(passes) == 1  # one trial pass at the largest ratio, no grid scan
    assert _inner_widths(m) == [16] * 3 + [32] * 3 + [64] * 3  # the model is untouched


def test_effective_channel_ratio_is_reported_when_rounding_changes_it():
    m = build_model("resnet20", 10)
    logs: list[str] = []
    res = prune_model(m, X, PruneConfig(ratio=0.3, round_to=8), log=logs.append)
    # 16 * 0.7 = 11.2 -> 8 kept in layer1: half of those channels go, not 30%
    assert _inner_widths(m) == [8] * 3 + [16] * 3 + [40] * 3
    assert res.effective_channel_ratio == pytest.approx(1 - (24 + 48 + 120) / (48 + 96 + 192))
    assert any("effective" in s and "asked 30.0%" in s for s in logs), logs
    assert res.to_dict()["effective_channel_ratio"] == res.effective_channel_ratio
