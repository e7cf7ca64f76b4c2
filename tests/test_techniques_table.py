"""benchmarks/techniques.py (issue 17's one table), on a tiny model with a stand-in technique."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

from tests.test_compress import _Halve

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"edgekit_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def halve():
    from edgekit.compress import TECHNIQUES, register

    mod = types.ModuleType("edgekit_test_halve_table")
    mod.TECHNIQUE = _Halve()
    sys.modules[mod.__name__] = mod
    register("halve-test", mod.__name__)
    yield
    TECHNIQUES.pop("halve-test", None)
    sys.modules.pop(mod.__name__, None)


def test_table_rows_for_a_technique_a_missing_one_and_fp16(tmp_path, tiny_npz, halve):
    tech = _load("techniques")
    out = tmp_path / "t"
    args = tech.parser().parse_args(
        [
            "--model", "resnet8", "--dataset", f"npz:{tiny_npz}",
            "--techniques", "halve-test,not-landed-yet", "--level", "halve-test=0.5",
            "--targets", "ort-cpu", "--finetune-epochs", "0", "--rounds", "2", "--quick",
            "--exporter", "torchscript", "--out", str(out),
        ]
    )  # fmt: skip
    rep = tech.technique_table(args, log=lambda *_: None)
    rows = {(r["technique"], r["target"]): r for r in rep["rows"]}
    base, half = rows[("baseline", "ort-cpu")], rows[("halve-test", "ort-cpu")]
    assert base["status"] == half["status"] == "ok"
    assert base["ratio_to_baseline"]["median"] == 1.0
    assert half["ratio_to_baseline"]["rounds"] == 2 and half["p50_ms"] > 0
    assert half["level"] == 0.5 and half["params"] == base["params"]
    assert 0 < half["zip_mb"] < half["size_mb"] * 1.01
    assert half["top1"] is not None  # scored on the test split
    missing = rows[("not-landed-yet", "ort-cpu")]
    assert missing["status"] == "unavailable" and "not available in this build" in missing["reason"]
    fp16 = rows[("fp16", "ort-cpu-fp16")]
    assert fp16["status"] == "ok" and fp16["ratio_to_baseline"]["rounds"] == 2
    assert fp16["size_mb"] < 0.6 * base["size_mb"]  # FP16 weights: half the bytes
    saved = json.loads((out / "techniques.json").read_text())
    assert len(saved["rows"]) == len(rep["rows"]) == 4  # baseline, halve, missing, fp16
    md = (out / "techniques.md").read_text()
    assert "| halve-test | 0.5 | ort-cpu |" in md and "not available in this build" in md


def test_bad_input_exits_2_before_any_work(tmp_path, tiny_npz, capsys):
    tech = _load("techniques")
    for extra, msg in (
        (["--targets", "ort-cpu,nope"], "unknown target(s) nope"),
        (["--level", "cluster"], "give NAME=LEVEL"),
    ):
        args = tech.parser().parse_args(
            ["--model", "resnet8", "--dataset", f"npz:{tiny_npz}", "--out", str(tmp_path / "x")]
            + extra
        )
        with pytest.raises(SystemExit) as e:
            tech.technique_table(args, log=lambda *_: None)
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_binaryconnect_binarizes_all_convs_but_the_first_and_clips(tmp_path):
    import torch
    from torch import nn

    bc = _load("binaryconnect").BinaryConnect()
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Conv2d(4, 6, 3), nn.Flatten(), nn.LazyLinear(2)
    )  # fmt: skip
    x = torch.randn(2, 3, 8, 8)
    net(x)
    with torch.no_grad():
        net[1].weight[0, 0, 0, 0] = 3.0  # outside [-1, 1]: clipped
    first = net[0].weight.detach().clone()
    rec = bc.apply(net, x[:1], 1.0, {"scale": "channel"}, lambda *_: None)
    assert rec["binarized"] == ["1"] and rec["kept_float"] == ["0", "3"]
    w = net[1].weight  # the parametrized weight: alpha_c * sign(w)
    latent = net[1].parametrizations.weight.original
    assert latent.abs().max() <= 1.0  # clipped when applied
    alpha = latent.abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(w, alpha * torch.where(latent >= 0, 1.0, -1.0))
    net(x).sum().backward()  # straight-through: the latent weights get a gradient
    assert latent.grad is not None and latent.grad.abs().sum() > 0
    with torch.no_grad():
        latent[0, 0, 0, 1] = -5.0
    net(x)  # the forward pre-hook clips before the pass
    assert latent.abs().max() <= 1.0
    done = bc.finalize(net)
    assert done["binary_weights"] == 6 * 4 * 9 and done["max_distinct_abs_per_channel"] == 1
    assert not hasattr(net[1], "parametrizations") and torch.equal(net[0].weight, first)
