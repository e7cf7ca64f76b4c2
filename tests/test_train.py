"""Training helpers: the KD loss against its definition, the held-out split, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgekit.train import kd_loss, split_train_val


def test_kd_loss_matches_hand_computed_example():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    y = torch.tensor([0])
    T, alpha = 2.0, 0.25
    # softened: p_s = softmax([0.5, 0]), p_t = softmax([0, 0.5])
    a = 1 / (1 + math.exp(-0.5))  # 0.6225
    p_s, p_t = [a, 1 - a], [1 - a, a]
    kl = sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
    ce = -math.log(math.exp(1) / (math.exp(1) + 1))
    want = alpha * T * T * kl + (1 - alpha) * ce
    got = kd_loss(s, t, y, alpha, T).item()
    assert abs(got - want) < 1e-6
    assert abs(want - (0.25 * 4 * 0.1224 + 0.75 * 0.3133)) < 1e-3  # the numbers themselves
    # alpha 0 is plain cross-entropy; identical logits give zero KL
    assert abs(kd_loss(s, t, y, 0.0, T).item() - ce) < 1e-6
    assert kd_loss(s, s, y, 1.0, T).item() < 1e-7


def test_split_is_held_out_of_train_seeded_and_balanced():
    from edgekit.data import Split

    y = np.repeat(np.arange(10), 20)
    x = np.arange(len(y), dtype=np.uint8)[:, None, None, None].repeat(3, 3)
    tr, va = split_train_val(Split(x, y), 0.1, seed=0)
    assert len(va) == 20 and np.bincount(va.y).tolist() == [2] * 10
    assert len(tr) == 180 and not set(tr.x[:, 0, 0, 0]) & set(va.x[:, 0, 0, 0])
    tr2, va2 = split_train_val(Split(x, y), 0.1, seed=0)
    assert np.array_equal(va.x, va2.x)


def test_train_checkpoints_best_resume_and_curves(tiny_npz, tmp_path):
    from edgekit.models import load_model
    from edgekit.train import TrainConfig, train

    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05)
    out = train("resnet8", f"npz:{tiny_npz}", tmp_path, cfg, val_fraction=0.25, log=None)
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert len(out["history"]) == 2 and "val_top1" in out["history"][0]
    m, meta = load_model(None, tmp_path / "last.pt", None)  # weights_only inside
    assert meta["resume"]["epoch"] == 2
    cfg3 = TrainConfig(epochs=3, batch_size=32, lr=0.05)
    out3 = train(
        "resnet8", f"npz:{tiny_npz}", tmp_path, cfg3, val_fraction=0.25, resume=True, log=None
    )
    assert [h["epoch"] for h in out3["history"]] == [1, 2, 3]
    assert out3["best_val_top1"] >= out["best_val_top1"]


def _pruned_pair():
    import copy

    from edgekit.models import build_model
    from edgekit.prune import PruneConfig, prune_model

    torch.manual_seed(0)
    teacher = build_model("resnet8", 10).eval()
    student = copy.deepcopy(teacher)
    prune_model(student, torch.randn(1, 3, 32, 32), PruneConfig(ratio=0.5, round_to=1))
    return teacher, student


def test_feature_distill_picks_same_shape_blocks_and_matches_its_definition():
    import copy

    from edgekit.train import FeatureDistill

    teacher, student = _pruned_pair()
    fd = FeatureDistill(student, teacher)
    x = torch.randn(4, 3, 32, 32)
    student.eval()(x)
    with torch.no_grad():
        teacher(x)
    s_out, t_out = dict(fd.s_out), dict(fd.t_out)
    got = fd.loss()
    # ResNet-8: one block per stage; pruning inside blocks keeps their output shapes
    assert fd.layers == ["layer1.0", "layer2.0", "layer3.0"]
    want = np.mean(
        [float(((s_out[n] - t_out[n]) ** 2).mean() / (t_out[n] ** 2).mean()) for n in fd.layers]
    )
    assert got.item() > 0.01 and abs(got.item() - want) < 1e-5
    fd.close()
    assert not any(m._forward_hooks for m in student.modules())
    # a student identical to its teacher has zero loss
    twin = copy.deepcopy(teacher)
    fd = FeatureDistill(twin, teacher)
    twin(x), teacher(x)
    assert fd.loss().item() == 0.0
    fd.close()


def test_feature_distill_errors_name_the_problem():
    import pytest

    from edgekit.errors import EdgekitError
    from edgekit.train import FeatureDistill

    teacher, student = _pruned_pair()
    with pytest.raises(EdgekitError, match="layer9.0"):
        FeatureDistill(student, teacher, ["layer9.0"])
    # a pruned layer's output changed shape: nothing left to distil
    fd = FeatureDistill(student, teacher, ["layer1.0.conv1"])
    x = torch.randn(2, 3, 32, 32)
    student(x), teacher(x)
    with pytest.raises(EdgekitError, match="same output shape"):
        fd.loss()
    fd.close()


def test_fit_with_feature_distillation_lowers_the_feature_error(tiny_npz):
    import copy

    from edgekit.data import load_dataset
    from edgekit.preprocess import Preprocess
    from edgekit.train import FeatureDistill, TrainConfig, fit

    ds = load_dataset(f"npz:{tiny_npz}")
    pre = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), height=32, width=32)
    teacher, start = _pruned_pair()
    x = torch.from_numpy(pre.apply(ds.train.x[:64]))

    def feature_error(student):
        # as in training: the student normalises with batch statistics, the teacher is frozen
        fd = FeatureDistill(student, teacher)
        with torch.no_grad():
            student.train()(x), teacher(x)
        out = fd.loss().item()
        fd.close()
        return out

    errors = {}
    for beta in (0.0, 100.0):
        student = copy.deepcopy(start)
        cfg = TrainConfig(epochs=3, batch_size=32, lr=0.02, kd_alpha=0.7, kd_features=beta)
        fit(student, ds.train, pre, cfg, teacher=teacher)
        assert not any(m._forward_hooks for m in student.modules())  # hooks removed
        errors[beta] = feature_error(student)
    before = feature_error(copy.deepcopy(start))
    assert errors[100.0] < 0.7 * before and errors[100.0] < 0.7 * errors[0.0], (before, errors)


def _tiny(tiny_npz):
    from edgekit.data import load_dataset
    from edgekit.preprocess import Preprocess

    ds = load_dataset(f"npz:{tiny_npz}")
    return ds, Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), height=32, width=32)


def test_fit_with_the_device_loader_learns_and_is_deterministic(tiny_npz):
    from edgekit.models import build_model
    from edgekit.train import TrainConfig, fit

    ds, pre = _tiny(tiny_npz)

    def run(seed):
        torch.manual_seed(0)
        m = build_model("resnet8", 10)
        cfg = TrainConfig(epochs=4, batch_size=16, lr=0.05, seed=seed)
        hist = fit(m, ds.train, pre, cfg, device="cpu")
        return m, hist

    m1, h1 = run(0)
    m2, h2 = run(0)
    _, h3 = run(1)
    assert h1[-1]["loss"] < 0.8 * h1[0]["loss"], [h["loss"] for h in h1]
    assert [h["loss"] for h in h1] == [h["loss"] for h in h2]  # same seed: same run
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [h["loss"] for h in h3] != [h["loss"] for h in h1]  # the seed matters
    assert h1[0]["device"] == "cpu" and h1[0]["images_per_s"] > 0


def test_loader_shards_like_distributed_sampler_and_normalises():
    from torch.utils.data.distributed import DistributedSampler

    from edgekit.loader import DeviceBatches, fits_in_device_memory

    n = 23
    x = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    y = np.arange(n) % 10
    common = dict(mean=(0.5,) * 3, std=(0.25,) * 3, padding=0, hflip=False, seed=5)
    shards = []
    for rank in range(2):
        b = DeviceBatches(x, y, "cpu", 4, rank=rank, world=2, **common)
        s = DistributedSampler(range(n), num_replicas=2, rank=rank, seed=5)
        s.set_epoch(3)
        assert b.order(3).tolist() == list(s)
        shards.append(b.order(3))
        assert b.steps_per_epoch() == 3  # 12 images per rank, 4 per batch
    assert set(torch.cat(shards).tolist()) == set(range(n))
    b = DeviceBatches(x, y, "cpu", 8, **common)
    xb, yb = next(b.epoch(0))
    i = b.order(0)[:8]
    want = (torch.from_numpy(x[i.numpy()]).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    assert torch.allclose(xb, want) and yb.tolist() == y[i.numpy()].tolist()
    # the GPU residency rule: CIFAR-10 (147 MB) fits an 80 GB card, not a nearly full one
    assert fits_in_device_memory(147_000_000, 70 << 30, 80 << 30)
    assert not fits_in_device_memory(147_000_000, 1 << 30, 80 << 30)


def test_recipes_param_groups_and_lr_schedule():
    from edgekit.models import build_model
    from edgekit.recipes import lr_factor, param_groups
    from edgekit.train import make_config

    fast = make_config("cifar-fast")
    assert (fast.epochs, fast.batch_size, fast.lr, fast.nesterov, fast.decay_1d) == (
        150,
        256,
        0.2,
        True,
        False,
    )
    assert fast.warmup_epochs == 2 and fast.label_smoothing == 0.1 and fast.momentum == 0.9
    # explicit values win; None keeps the recipe's
    mixed = make_config("cifar-fast", epochs=3, lr=None, batch_size=64)
    assert (mixed.epochs, mixed.lr, mixed.batch_size) == (3, 0.2, 64)
    default = make_config(None)
    assert (default.epochs, default.lr, default.nesterov, default.decay_1d) == (
        30,
        0.1,
        False,
        True,
    )

    m = build_model("resnet8", 10)
    decay, no_decay = param_groups(m, 5e-4, decay_1d=False)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in no_decay["params"]}
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert bns and all(id(b.weight) in ids and id(b.bias) in ids for b in bns)
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert not any(id(c.weight) in ids for c in convs)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))
    assert len(param_groups(m, 5e-4, decay_1d=True)) == 1

    # 2-epoch warm-up of 10 steps each, 4 epochs: linear to the peak, then cosine to 0
    assert lr_factor(0, 40, 20) == 1 / 20
    assert lr_factor(9, 40, 20) == 0.5
    assert lr_factor(19, 40, 20) == 1.0
    assert lr_factor(20, 40, 20) == 1.0
    assert abs(lr_factor(30, 40, 20) - 0.5) < 1e-12
    assert lr_factor(40, 40, 20) < 1e-12
    # without warm-up it is torch's CosineAnnealingLR
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 40)
    for step in range(40):
        assert abs(opt.param_groups[0]["lr"] - 0.1 * lr_factor(step, 40, 0)) < 1e-9
        opt.step()
        sched.step()


def test_fit_follows_the_recipe_schedule_and_compile_failure_is_one_error(tiny_npz, monkeypatch):
    import pytest

    from edgekit.errors import EdgekitError
    from edgekit.models import build_model
    from edgekit.train import fit, make_config

    ds, pre = _tiny(tiny_npz)
    cfg = make_config("cifar-fast", epochs=3, batch_size=16, lr=0.1, warmup_epochs=1)
    hist = fit(build_model("resnet8", 10), ds.train, pre, cfg)
    # 80 images / 16 = 5 steps per epoch: the warm-up reaches the peak after epoch 1, then
    # the cosine runs over the 10 remaining steps (half-way after epoch 2)
    assert abs(hist[0]["lr"] - 0.1) < 1e-9
    assert abs(hist[1]["lr"] - 0.05) < 1e-9
    assert hist[-1]["lr"] < 1e-9
    # shorter than twice the warm-up: the warm-up takes half, the run still ends at 0
    short = fit(build_model("resnet8", 10), ds.train, pre, make_config("cifar-fast", epochs=2))
    assert short[0]["lr"] == 0.2 and short[-1]["lr"] < 1e-9

    def broken(model, *a, **k):
        def run(*args, **kwargs):
            raise RuntimeError("backend compiler failed: no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    cfg.compile = True
    with pytest.raises(EdgekitError, match=r"--compile failed.*run without --compile"):
        fit(build_model("resnet8", 10), ds.train, pre, cfg)


def test_train_records_the_device(tiny_npz, tmp_path):
    from edgekit.models import read_checkpoint
    from edgekit.train import TrainConfig, train

    out = train(
        "resnet8",
        f"npz:{tiny_npz}",
        tmp_path,
        TrainConfig(epochs=1, batch_size=32),
        val_fraction=0.25,
        device="auto",
        log=None,
    )
    want = "cpu" if not torch.cuda.is_available() else out["device"]
    assert out["device"] == want
    meta = read_checkpoint(tmp_path / "best.pt")
    assert meta["device"] == want and meta["history"][0]["device"].startswith(want[:3])


def _sched(total: int):
    from edgekit.recipes import lr_factor

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, 0))


def _lrs(opt, sched, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_resume_with_more_epochs_continues_the_cosine_never_upward():
    """--epochs on --resume is the TOTAL; a larger one stretches the decay from where it was."""
    from edgekit.train import _continue_schedule

    opt, sched = _sched(10)
    first = _lrs(opt, sched, 5)
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    reference = _lrs(opt, sched, 5)  # the uninterrupted 10-step run

    for total, n in ((10, 5), (20, 15)):
        opt2, sched2 = _sched(total)
        opt2.load_state_dict(state["optimizer"])
        sched2.load_state_dict(state["scheduler"])
        logs: list[str] = []
        _continue_schedule(opt2, sched2, total, 0, logs.append)
        rest = _lrs(opt2, sched2, n)
        if total == 10:  # same total: exactly the run that was interrupted
            assert rest == pytest.approx(reference) and not logs
        else:
            assert rest[0] == pytest.approx(reference[0])  # no jump at the resume step
            assert all(b <= a + 1e-12 for a, b in zip([first[-1], *rest[:-1]], rest, strict=True))
            assert rest[-1] < 0.01 * first[0] and "continues" in logs[0]
