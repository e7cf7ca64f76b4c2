"""Unstructured and 2:4 sparsity, weight clustering (issue 17), and the rows they get:
the zipped artifact size and the note that no backend here runs sparse kernels."""

from __future__ import annotations

import json
import math
import shutil
import sys
import zipfile

import pytest
import torch
from torch import nn

from edgekit.compress import get_technique
from edgekit.compress.sparsity import group_zeros_ok, nm_mask, weight_layers
from edgekit.errors import EdgekitError


def _net() -> nn.Module:
    """Conv 3->8 (not a multiple of 4), conv 8->8, grouped conv 8->8 (4 per group), linear."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Conv2d(8, 8, 1, groups=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 12),
    )


def _apply(name, level, model=None, options=None, log=None):
    m = model or _net()
    t = get_technique(name)
    opts = dict(options or {})
    t.check(level, opts)
    rec = t.apply(m, torch.zeros(1, 3, 8, 8), level, opts, log or (lambda *_: None))
    return m, t, rec


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("level", [0.0, 0.3, 0.5, 0.9])
def test_unstructured_reaches_the_exact_sparsity(scope, level):
    m, t, _ = _apply("unstructured", level, options={"scope": scope})
    fin = t.finalize(m)
    s = fin["sparsity_reached"]
    n = s["weights"]
    if scope == "global":  # round(level * all weights), ranked across layers
        assert s["zeros"] == round(level * n)
    else:  # each layer to the sparsity
        for r in s["layers"]:
            assert r["zeros"] == round(level * r["weights"]), r
        assert abs(s["sparsity"] - level) < len(s["layers"]) / n
    # plain weights again: no mask or weight_orig left, the zeros are in the weight
    assert not any("mask" in k or "orig" in k for k in m.state_dict())
    assert sum(int((mod.weight == 0).sum()) for _, mod in weight_layers(m)) == s["zeros"]


def test_masks_stay_fixed_while_training():
    m, t, _ = _apply("unstructured", 0.6)
    zeros_before = [(mod.weight == 0).clone() for _, mod in weight_layers(m)]
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    for _ in range(3):
        loss = m(torch.randn(4, 3, 8, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    t.finalize(m)
    for z, (_, mod) in zip(zeros_before, weight_layers(m), strict=True):
        assert bool((mod.weight[z] == 0).all())


def test_nm_mask_keeps_the_two_largest_of_four_input_channels():
    w = torch.tensor([[[[0.1]], [[-3.0]], [[2.0]], [[0.5]], [[1.0]], [[1.5]], [[-9.0]], [[0.0]]]])
    mask = nm_mask(w)  # weight [1 out, 8 in, 1, 1]: groups in[0:4], in[4:8]
    assert mask.flatten().tolist() == [0, 1, 1, 0, 0, 1, 1, 0]
    # a group is 4 consecutive input channels at one kernel position, not along kw
    w = torch.randn(2, 4, 3, 3)
    mask = nm_mask(w)
    assert bool((mask.sum(dim=1) == 2).all())


def test_2_4_skips_a_layer_whose_input_channels_are_not_a_multiple_of_4():
    lines = []
    m, t, rec = _apply("2:4", 0.5, log=lines.append)
    assert rec["skipped"] == [
        {"layer": "0", "reason": "3 input channels per group, not a multiple of 4"}
    ]
    assert rec["layers_pruned"] == ["2", "3", "6"]
    assert any("skipping layer 0" in ln for ln in lines)
    fin = t.finalize(m)
    assert fin["pattern_holds"] and fin["sparsity_reached"]["sparsity_pruned"] == 0.5
    layers = dict(weight_layers(m))
    assert int((layers["0"].weight == 0).sum()) == 0  # the skipped layer stays dense


def test_2_4_names_an_explicitly_asked_layer_that_cannot_hold_it():
    with pytest.raises(EdgekitError, match="layer 0 has 3 input channels per group"):
        _apply("2:4", 0.5, options={"layers": ["0", "2"]})
    with pytest.raises(EdgekitError, match="no Conv2d/Linear layer named 'nope'"):
        _apply("2:4", 0.5, options={"layers": ["nope"]})


@pytest.mark.parametrize(
    ("name", "level", "match"),
    [
        ("unstructured", 1.0, r"outside \[0, 1\)"),
        ("unstructured", -0.1, r"outside \[0, 1\)"),
        ("unstructured", float("nan"), r"outside \[0, 1\)"),
        ("2:4", 0.3, "exactly half"),
        ("cluster", 0, "whole number from 1 to 8"),
        ("cluster", 9, "whole number from 1 to 8"),
        ("cluster", 2.5, "whole number from 1 to 8"),
    ],
)
def test_bad_levels_are_refused(name, level, match):
    with pytest.raises(EdgekitError, match=match):
        get_technique(name).check(level, {})


def test_cluster_trains_the_centroids_only_and_averages_gradients_per_centroid():
    m, t, rec = _apply("cluster", 2)
    conv = m[2]
    p = conv.parametrizations.weight[0]
    trainable = {id(q) for q in m.parameters() if q.requires_grad}
    assert id(p.centroids) in trainable
    assert id(conv.parametrizations.weight.original) not in trainable
    g = torch.randn_like(conv.weight)
    (conv.weight * g).sum().backward()
    summed = torch.zeros(4).index_add_(0, p.index.flatten(), g.flatten())
    size = torch.bincount(p.index.flatten(), minlength=4).clamp(min=1)
    assert torch.allclose(p.centroids.grad, summed / size, atol=1e-5)
    assert torch.equal(conv.weight, p.centroids[p.index])  # the value is exact


def test_kmeans_linear_init_finds_separated_clusters():
    from edgekit.compress.cluster import kmeans_1d

    v = torch.cat([torch.full((50,), -1.0), torch.full((30,), 0.2), torch.full((20,), 3.0)])
    c, idx = kmeans_1d(v[torch.randperm(100)], 3)
    assert torch.allclose(c, torch.tensor([-1.0, 0.2, 3.0]))
    assert torch.bincount(idx).tolist() == [50, 30, 20]


def _compress(tmp_path, tiny_npz, tiny_workspace, technique, level, epochs, name):
    from edgekit.compress.driver import compress_checkpoint
    from edgekit.models import load_model

    lines = []
    rec = compress_checkpoint(
        technique,
        level,
        str(tiny_workspace.root / "model.pt"),
        tmp_path / name,
        f"npz:{tiny_npz}",
        finetune_epochs=epochs,
        lr=0.05,
        log=lines.append,
    )
    m, meta = load_model(None, tmp_path / name, None)
    return rec, m, meta, lines


def test_2_4_holds_in_every_group_after_fine_tuning(tmp_path, tiny_npz, tiny_workspace):
    rec0, m0, _, _ = _compress(tmp_path, tiny_npz, tiny_workspace, "2:4", 0.5, 0, "a.pt")
    rec, m, meta, lines = _compress(tmp_path, tiny_npz, tiny_workspace, "2:4", 0.5, 1, "b.pt")
    assert meta["compression"]["technique"] == "2:4"
    first = weight_layers(m)[0][0]  # ResNet-8's stem: 3 input channels
    assert [s["layer"] for s in rec["skipped"]] == [first]
    assert any(f"skipping layer {first}" in ln for ln in lines)
    w0 = dict(weight_layers(m0))
    for n, mod in weight_layers(m):
        if n == first:
            continue
        assert group_zeros_ok(mod.weight), n
        g = mod.weight.detach().movedim(1, -1).reshape(-1, 4)
        assert bool(((g != 0).sum(dim=1) == 2).all()), n  # exactly 2 kept (trained, nonzero)
        # fine-tuning moved the kept weights, never the zeros
        assert torch.equal(mod.weight == 0, w0[n].weight == 0), n
    assert any(not torch.equal(mod.weight, w0[n].weight) for n, mod in weight_layers(m))
    assert rec["pattern_holds"] and rec["sparsity_reached"]["sparsity_pruned"] == 0.5


def test_cluster_keeps_2b_values_per_layer_after_fine_tuning(tmp_path, tiny_npz, tiny_workspace):
    rec, m, meta, _ = _compress(tmp_path, tiny_npz, tiny_workspace, "cluster", 2, 1, "c.pt")
    for n, mod in weight_layers(m):
        assert torch.unique(mod.weight).numel() <= 4, n
    assert rec["max_distinct"] <= 4 and rec["centroid_max_shift"] > 0  # the centroids moved
    cb = rec["codebook"]
    for r in cb["layers"]:
        assert r["index_bytes"] == math.ceil(r["weights"] * 2 / 8)
        assert r["centroid_bytes"] == 4 * 4
    assert cb["bytes"] == sum(r["bytes"] for r in cb["layers"])
    assert cb["ratio"] < 2 / 32 + 0.01  # 2-bit indices + 16 B per layer vs float32


def _cli(monkeypatch, capsys, *args):
    from edgekit import cli

    monkeypatch.setattr(sys, "argv", ["edgekit", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    return e.value.code, err


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["sparsify", "--sparsity", "1.5"], "sparsity 1.5 is outside [0, 1)"),
        (["sparsify", "--sparsity", "-0.5"], "is outside [0, 1)"),
        (["sparsify", "--sparsity", "0.5", "--pattern", "2:4"], "exactly one of"),
        (["sparsify"], "exactly one of"),
        (["sparsify", "--pattern", "1:4"], "--pattern 1:4 is not supported"),
        (["cluster", "--bits", "0"], "bits 0 is not a whole number from 1 to 8"),
        (["cluster", "--bits", "9"], "bits 9 is not a whole number from 1 to 8"),
    ],
)
def test_cli_bad_levels_exit_2_with_one_line(monkeypatch, capsys, tmp_path, args, match):
    code, err = _cli(
        monkeypatch, capsys, *args, "--weights", tmp_path / "w.pt", "-o", tmp_path / "o"
    )
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], err
    assert not (tmp_path / "o").exists()


def test_cli_sparsify_writes_a_checkpoint(monkeypatch, capsys, tmp_path, tiny_npz, tiny_workspace):
    from edgekit.models import load_model

    w = tiny_workspace.root / "model.pt"
    code, err = _cli(
        monkeypatch, capsys, "sparsify", "--weights", w, "-o", tmp_path / "s",
        "--sparsity", "0.7", "--scope", "layer", "--dataset", f"npz:{tiny_npz}",
    )  # fmt: skip
    assert code in (0, None), err
    assert "sparsity reached: 70.0% of the Conv2d/Linear weights" in err
    _, meta = load_model(None, tmp_path / "s" / "model.pt", None)
    c = meta["compression"]
    assert c["technique"] == "unstructured" and c["scope"] == "layer"
    assert abs(c["sparsity_reached"]["sparsity"] - 0.7) < 1e-3


def test_deflated_bytes_is_zips_deflate_size(tmp_path):
    from edgekit.harness import deflated_bytes

    f = tmp_path / "w.bin"
    f.write_bytes(bytes(range(256)) * 100 + b"\x00" * 50_000)
    z = tmp_path / "w.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(f, "w.bin")
    with zipfile.ZipFile(z) as zf:
        assert deflated_bytes([f]) == zf.getinfo("w.bin").compress_size
    assert deflated_bytes([f]) < f.stat().st_size / 10


@pytest.fixture(scope="module")
def sparse_workspace(tmp_path_factory, tiny_workspace):
    """A copy of the tiny work directory whose edgekit.json records 2:4 compression
    (what the pipeline copies from the checkpoint), with ort-cpu built."""
    pytest.importorskip("onnxruntime")
    from edgekit.pipeline import Workspace, build

    root = tmp_path_factory.mktemp("sparse-ws")
    for f in ("edgekit.json", "model.pt", "model.onnx"):
        shutil.copy(tiny_workspace.root / f, root / f)
    rec = json.loads((root / "edgekit.json").read_text())
    rec["compression"] = {"technique": "2:4", "level": 0.5}
    (root / "edgekit.json").write_text(json.dumps(rec))
    ws = Workspace(root)
    build(ws, "ort-cpu")
    return ws


def test_sparse_rows_carry_the_note_and_the_zipped_size(sparse_workspace, tmp_path):
    from edgekit import api
    from edgekit.report import load_report, markdown_table, table_parts

    res = api.benchmark(
        sparse_workspace.root, "ort-cpu", quick=True, rounds=1, isolate=False,
        output=tmp_path / "b.json",
    )  # fmt: skip
    (row,) = res.rows
    assert row["status"] == "ok"
    assert "no backend here runs sparse kernels" in row["note"]
    assert "latency is the dense model's" in row["note"]
    assert 0 < row["zip_mb"] < row["size_mb"] * 1.01
    saved = load_report(tmp_path / "b.json")["rows"][0]  # the JSON has it, schema-checked
    assert saved["zip_mb"] == row["zip_mb"] and saved["note"] == row["note"]
    heads, body, notes = table_parts(res.rows, wide=True)
    assert "zip MB" in heads and body[0][heads.index("status")].endswith(" [1]")
    assert notes[0].startswith("[1] 2:4 sparse weights: no backend here runs sparse kernels")
    assert "zip MB" not in table_parts(res.rows)[0]  # --wide only
    assert "zip MB" in markdown_table(res.rows)


def test_notes_by_technique_and_row():
    from edgekit.harness import compression_note

    ok_cpu = {"target": "ort-cpu", "backend": "onnxruntime", "status": "ok"}
    trt = {"target": "trt-fp16", "backend": None, "status": "unavailable"}
    assert "TensorRT's sparse path" in compression_note(trt, {"technique": "2:4"})
    assert "unverified here" in compression_note(trt, {"technique": "2:4"})
    assert "only the 2:4 pattern" in compression_note(trt, {"technique": "unstructured"})
    assert "unstructured sparse weights" in compression_note(ok_cpu, {"technique": "unstructured"})
    assert "4 bits" in compression_note(ok_cpu, {"technique": "cluster", "bits": 4})
    assert compression_note(ok_cpu, {"technique": "channel"}) is None
    assert compression_note(ok_cpu, None) is None
    # nothing was measured for an unavailable CPU row: no latency note
    assert compression_note({**ok_cpu, "status": "unavailable"}, {"technique": "2:4"}) is None
