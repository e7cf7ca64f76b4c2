"""Depth pruning (technique ``depth``, ``edgekit drop-blocks``): which blocks can go, the
checkpoint that records them, and bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from edgekit.errors import EdgekitError  # noqa: E402

EX = torch.zeros(1, 3, 32, 32)


def test_droppable_blocks_are_the_identity_shortcut_blocks():
    from edgekit.compress.depth import droppable_blocks
    from edgekit.models import build_model

    # CIFAR ResNet-20: the first block of layer2/layer3 changes shape (option-A shortcut)
    assert droppable_blocks(build_model("resnet20", 10).eval(), EX) == {
        "layer1": ["layer1.0", "layer1.1", "layer1.2"],
        "layer2": ["layer2.1", "layer2.2"],
        "layer3": ["layer3.1", "layer3.2"],
    }
    # torchvision ResNet-18 (CIFAR stem): a block with a downsample projection is not
    assert droppable_blocks(build_model("resnet18", 10).eval(), EX) == {
        "layer1": ["layer1.0", "layer1.1"],
        "layer2": ["layer2.1"],
        "layer3": ["layer3.1"],
        "layer4": ["layer4.1"],
    }


class NotFinal(nn.Module):
    """Adds its input, then convolves: dropping it would not leave a residual path."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.b(x + self.a(x))


class Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.a(x))


class Net(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.stem, self.body = nn.Conv2d(3, 8, 3, padding=1), nn.Sequential(block(), block())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.body(self.stem(x)).mean((2, 3)))


def test_only_a_final_residual_addition_counts_and_none_is_an_error():
    from edgekit.compress.depth import TECHNIQUE, droppable_blocks

    assert droppable_blocks(Net(Res).eval(), EX) == {"body": ["body.0", "body.1"]}
    assert droppable_blocks(Net(NotFinal).eval(), EX) == {}
    with pytest.raises(EdgekitError, match="no droppable residual block"):
        TECHNIQUE.apply(Net(NotFinal).eval(), EX, 0.5, {}, lambda *_: None)
    m = Net(Res).eval()
    rec = TECHNIQUE.apply(m, EX, 0.5, {}, lambda *_: None)
    assert rec["dropped"] == ["body.1"] and isinstance(m.body[1], nn.Identity)
    assert isinstance(m.body[0], Res)


@pytest.mark.parametrize(
    "level,options,match",
    [
        (0.0, {}, "outside"),
        (1.0, {}, "outside"),
        (None, {}, "outside"),
        (0.5, {"nope": 1}, "unknown option"),
        (None, {"blocks": "layer1.0"}, "list of module names"),
    ],
)
def test_bad_levels_and_options(level, options, match):
    from edgekit.compress.depth import TECHNIQUE

    with pytest.raises(EdgekitError, match=match):
        TECHNIQUE.check(level, options)


def test_named_blocks_must_be_droppable_and_a_tiny_level_drops_nothing():
    from edgekit.compress.depth import TECHNIQUE
    from edgekit.models import build_model

    m = build_model("resnet20", 10).eval()
    with pytest.raises(EdgekitError, match="layer2.0 cannot be dropped"):
        TECHNIQUE.apply(m, EX, None, {"blocks": ["layer2.0"]}, lambda *_: None)
    with pytest.raises(EdgekitError, match="drops no block"):
        TECHNIQUE.apply(m, EX, 0.1, {}, lambda *_: None)


def test_dropped_blocks_round_trip_through_a_weights_only_checkpoint(tmp_path, tiny_npz):
    """compress_checkpoint -> an edgekit checkpoint whose structure has Identity entries;
    load_model rebuilds the factory's ResNet-20, drops the same blocks, same outputs."""
    from edgekit.compress.driver import compress_checkpoint
    from edgekit.models import build_model, load_model, save_checkpoint
    from edgekit.structure import apply_structure

    src = tmp_path / "r20.pt"
    save_checkpoint(src, build_model("resnet20", 10).eval(), "resnet20", 10)
    out = tmp_path / "shallow.pt"
    rec = compress_checkpoint("depth", 0.34, str(src), out, f"npz:{tiny_npz}", log=lambda *_: None)
    assert rec["dropped"] == ["layer1.2", "layer2.2", "layer3.2"]
    assert rec["after"]["macs"] < rec["before"]["macs"]
    m, meta = load_model(None, out, None)
    assert meta["structure"] == {n: {"type": "Identity"} for n in rec["dropped"]}
    assert all(isinstance(m.get_submodule(n), nn.Identity) for n in rec["dropped"])
    assert not any(k.startswith("layer1.2.") for k in m.state_dict())
    # a crafted structure cannot drop a module the model does not have
    with pytest.raises(EdgekitError, match="does not have"):
        apply_structure(build_model("resnet20", 10), {"layer9.0": {"type": "Identity"}})


def test_cli_bad_input_is_one_line(tmp_path):
    for args in (["--level", "1.5"], ["--blocks", "layer2.0"]):
        r = subprocess.run(
            [sys.executable, "-m", "edgekit", "drop-blocks", "--weights", str(tmp_path / "x.pt"),
             "-o", str(tmp_path / "o"), *args],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.count("\n") <= 2
