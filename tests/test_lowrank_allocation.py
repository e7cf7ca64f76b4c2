"""Rank allocation of ``lowrank``: Zhang et al.'s greedy against the global energy rule."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from edgekit.compress import get_technique
from edgekit.compress.lowrank import _convs
from edgekit.errors import EdgekitError
from tests.test_lowrank import EXAMPLE, _edgekit, _macs, _resnet8, _user_error

X8 = torch.zeros(1, 3, 8, 8)


def _conv_with(sigma, stride=1, n=16, c=16) -> nn.Conv2d:
    """A 3x3 conv whose reshaped weight [n, c*9] has exactly the singular values ``sigma``."""
    g = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(c * 9, n, generator=g, dtype=torch.float64))
    conv = nn.Conv2d(c, n, 3, stride=stride, padding=1, bias=False)
    w = (u * torch.tensor(sigma, dtype=torch.float64)) @ v.T
    conv.weight.data = w.reshape(n, c, 3, 3).float()
    return conv


def _two_layers(sigma_a, sigma_b, stride_b=1) -> nn.Sequential:
    """conv0 (first, never factorized), then the two layers under test: "1" and "3"."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        _conv_with(sigma_a),
        nn.ReLU(),
        _conv_with(sigma_b, stride_b),
    ).eval()


def _apply(model, level, allocation, example=X8, **opts):
    opts = {"allocation": allocation, "round_to": 1, "method": "weights", **opts}
    return get_technique("lowrank").apply(model, example, level, opts, lambda *_: None)


def _log_energy(rec) -> float:
    return sum(math.log(v) for v in rec["energy_kept"].values())


STEEP = [0.7 ** (i / 2) for i in range(16)]  # energies 0.7**i: a steep spectrum
FLAT = [1.0] * 16


@pytest.mark.parametrize("level", [0.5, 0.6])
def test_zhang_finds_the_best_product_of_kept_energy_where_the_energy_rule_does_not(level):
    """Brute force over every pair of ranks (whole layer included) that meets the MACs
    target: the greedy's pair maximises the product of the kept energy fractions; the
    global energy threshold, which keeps the same fraction in both layers, picks a
    different pair with a strictly smaller product (it starves the steep layer)."""
    layers = _convs(_two_layers(STEEP, FLAT), X8, include_first=False)
    s, f = layers["1"], layers["3"]
    total = _macs_of(_two_layers(STEEP, FLAT))

    def kept(L, r):
        return (L.macs(r), L.energy_kept(r)) if L.saves(r) else (L.orig_macs, 1.0)

    best = max(
        (
            (math.log(kept(s, a)[1]) + math.log(kept(f, b)[1]), a, b)
            for a, b in itertools.product(range(1, 17), repeat=2)
            if s.orig_macs + f.orig_macs - kept(s, a)[0] - kept(f, b)[0] >= level * total
        ),
    )
    zhang = _apply(_two_layers(STEEP, FLAT), level, "zhang")
    energy = _apply(_two_layers(STEEP, FLAT), level, "energy")
    assert (zhang["ranks"]["1"], zhang["ranks"]["3"]) == best[1:]
    assert _log_energy(zhang) == pytest.approx(best[0])
    assert energy["ranks"]["1"] < zhang["ranks"]["1"]  # the steep layer: lower by the rule
    assert _log_energy(energy) < best[0] - 0.02
    assert zhang["macs_reduction"] >= level and zhang["energy_threshold"] is None


def _macs_of(model) -> int:
    from edgekit.prune import model_stats

    return model_stats(model, X8)["macs"]


def test_zhang_cuts_harder_where_a_rank_costs_more_macs():
    """Two layers with the same spectrum, one at 8x8 output positions and one at 4x4
    (stride 2): the energy rule gives them the same rank; Zhang's greedy, which weighs
    the energy lost against the MACs saved, gives the 4x costlier-per-rank layer the
    lower rank."""
    sigma = [0.85 ** (i / 2) for i in range(16)]
    energy = _apply(_two_layers(sigma, sigma, stride_b=2), 0.5, "energy")
    zhang = _apply(_two_layers(sigma, sigma, stride_b=2), 0.5, "zhang")
    assert energy["ranks"]["1"] == energy["ranks"]["3"]
    assert zhang["ranks"]["1"] < zhang["ranks"]["3"]
    assert zhang["macs_reduction"] >= 0.5


@pytest.mark.parametrize("round_to", [1, 8])
@pytest.mark.parametrize("level", [0.3, 0.5])
def test_zhang_meets_the_macs_target_with_ranks_in_steps_of_round_to(level, round_to):
    m = _resnet8()
    before = _macs(m)
    rec = _apply(m, level, "zhang", EXAMPLE, round_to=round_to)
    cut = 1 - _macs(m) / before
    assert level <= cut < level + 0.05, cut
    assert rec["macs_reduction"] == pytest.approx(cut)
    assert rec["allocation"] == "zhang" and rec["ranks"] and "conv1" not in rec["ranks"]
    assert all(r % round_to == 0 for r in rec["ranks"].values())
    with torch.no_grad():
        assert torch.isfinite(m(EXAMPLE)).all()


def test_zhang_keeps_explicit_ranks_and_takes_the_first_conv_when_asked():
    m = _resnet8()
    before = _macs(m)
    rec = _apply(m, 0.4, "zhang", EXAMPLE, ranks={"layer1.0.conv1": 3}, include_first=True)
    assert rec["ranks"]["layer1.0.conv1"] == 3
    eligible = _convs(_resnet8(), EXAMPLE, include_first=True)
    assert "conv1" in eligible and rec["layers_eligible"] == len(eligible)
    assert rec["macs_reduction"] >= 0.4  # the fixed rank's saving counts toward the target
    assert 1 - _macs(m) / before >= 0.4
    with pytest.raises(EdgekitError, match="cannot be reached"):
        _apply(_resnet8(), 0.97, "zhang", EXAMPLE, round_to=8)


def test_zhang_beats_the_energy_rule_on_its_objective_on_the_shared_resnet20(resnet20_weights):
    """On the real weights at -50% MACs the greedy keeps more of the product of energies
    than the global threshold, with exact ranks and with ranks rounded to 8."""
    from edgekit.models import load_model

    base, _ = load_model("resnet20", resnet20_weights, 10)
    for round_to in (1, 8):
        e = _apply(copy.deepcopy(base), 0.5, "energy", EXAMPLE, round_to=round_to)
        z = _apply(copy.deepcopy(base), 0.5, "zhang", EXAMPLE, round_to=round_to)
        assert z["macs_reduction"] >= 0.5 and e["macs_reduction"] >= 0.5
        assert _log_energy(z) > _log_energy(e) + 0.03, (round_to, z["ranks"], e["ranks"])


def test_allocation_options_are_validated():
    tech = get_technique("lowrank")
    tech.check(0.5, {"allocation": "zhang"})
    tech.check(None, {"allocation": "energy", "energy": 0.9})
    for level, opts, match in (
        (0.5, {"allocation": "greedy"}, "allocation 'greedy' is not one of energy, zhang"),
        (0.5, {"allocation": None}, "is not one of"),
        (None, {"allocation": "zhang", "energy": 0.9}, "takes no energy threshold"),
        (None, {"allocation": "zhang", "ranks": {"layer1.0.conv1": 4}}, "none was given"),
    ):
        with pytest.raises(EdgekitError, match=match):
            tech.check(level, opts)


def test_a_sweep_checks_the_allocation_before_any_work():
    from edgekit.sweep import check_techniques

    check_techniques(["channel", "lowrank"], [0, 0.5], {"allocation": "zhang"})
    with pytest.raises(EdgekitError, match="allocation 'Zhang' is not one of"):
        check_techniques(["lowrank"], [0, 0.5], {"allocation": "Zhang"})


def test_factorize_cli_allocation(tmp_path, tiny_npz, tiny_workspace):
    from edgekit.models import load_model

    w, ds = tiny_workspace.root / "model.pt", f"npz:{tiny_npz}"
    _user_error(
        _edgekit("factorize", "--weights", w, "-o", tmp_path / "o", "-d", ds, "--macs", "0.4",
                 "--allocation", "greedy"),
        "allocation 'greedy' is not one of energy, zhang",
    )  # fmt: skip
    assert not (tmp_path / "o").exists()
    res = _edgekit("factorize", "--weights", w, "-o", tmp_path / "z", "-d", ds, "--macs", "0.4",
                   "--allocation", "zhang", "--round-to", "1")  # fmt: skip
    assert res.returncode == 0, res.stderr
    _, meta = load_model(None, tmp_path / "z" / "model.pt", None)
    rec = meta["compression"]
    assert rec["allocation"] == "zhang" and rec["round_to"] == 1
    assert 1 - rec["after"]["macs"] / rec["before"]["macs"] >= 0.4
