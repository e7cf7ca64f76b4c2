"""The shared driver of edgekit.compress (issue 17), with a stand-in technique."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from edgekit.compress import get_technique, register
from edgekit.errors import EdgekitError


class _Halve:
    """Multiplies every conv weight by ``level`` through a parametrization."""

    name = "halve-test"
    level_doc = "weight scale"

    def check(self, level, options):
        if not 0 < level <= 1:
            raise EdgekitError(f"scale {level} is outside (0, 1]")

    def apply(self, model, example, level, options, log):
        import torch.nn.utils.parametrize as P

        class Scale(nn.Module):
            def forward(self, w):
                return w * level

        n = 0
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                P.register_parametrization(m, "weight", Scale())
                n += 1
        return {"layers": n}

    def finalize(self, model):
        import torch.nn.utils.parametrize as P

        for m in model.modules():
            if P.is_parametrized(m):
                P.remove_parametrizations(m, "weight")
        return {"finalized": True}


@pytest.fixture(scope="module")
def halve():
    mod = types.ModuleType("edgekit_test_halve")
    mod.TECHNIQUE = _Halve()
    sys.modules[mod.__name__] = mod
    register("halve-test", mod.__name__)
    yield mod.TECHNIQUE
    from edgekit.compress import TECHNIQUES

    TECHNIQUES.pop("halve-test", None)
    sys.modules.pop(mod.__name__, None)


def test_unknown_technique_lists_the_known_ones():
    with pytest.raises(EdgekitError, match="unknown compression technique 'nope'"):
        get_technique("nope")


def test_compress_checkpoint_applies_finalizes_and_saves(tmp_path, tiny_npz, tiny_workspace, halve):
    from edgekit.compress.driver import compress_checkpoint
    from edgekit.models import load_model

    src = tiny_workspace.root / "model.pt"
    ref, _ = load_model(None, src, None)
    out = tmp_path / "c.pt"
    rec = compress_checkpoint(
        "halve-test", 0.5, str(src), out, f"npz:{tiny_npz}", log=lambda *_: None
    )
    assert rec["technique"] == "halve-test" and rec["layers"] > 0 and rec["finalized"]
    m, meta = load_model(None, out, None)
    assert meta["compression"]["level"] == 0.5
    w0 = dict(ref.named_parameters())
    convs = [n for n, x in m.named_modules() if isinstance(x, nn.Conv2d)]
    w = dict(m.named_parameters())
    assert torch.allclose(w[f"{convs[0]}.weight"], 0.5 * w0[f"{convs[0]}.weight"])
    with pytest.raises(EdgekitError, match="outside"):
        compress_checkpoint("halve-test", 2.0, str(src), tmp_path / "d.pt", f"npz:{tiny_npz}")
    assert not (tmp_path / "d.pt").exists()
    with pytest.raises(EdgekitError):  # never overwrites without force
        compress_checkpoint("halve-test", 0.5, str(src), out, f"npz:{tiny_npz}")
