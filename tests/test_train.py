"""Training helpers: the KD loss against its definition, the held-out split, resume."""

from __future__ import annotations

import math

import numpy as np
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
