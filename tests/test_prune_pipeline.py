"""A pruned model goes through export, lowering and benchmarking like any other.

Every target of ``load_targets()`` that is available on this machine (the CPU ones:
pytorch-fp32, ort-cpu, and the INT8/TorchScript targets where they exist) must build
and bench the pruned ResNet-8; targets that need hardware absent here are skipped
by the pipeline with a reason and are not asserted on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch


def test_run_with_prune_ratio_builds_and_benches_every_available_target(tiny_npz, tmp_path):
    from edgekit.harness import BenchConfig
    from edgekit.pipeline import ModelSpec, run
    from edgekit.targets import load_targets, unavailable_reason

    spec = ModelSpec(dataset=f"npz:{tiny_npz}", model="resnet8", epochs=1, exporter="torchscript")
    spec.prune_ratio = 0.5
    spec.prune_options = {"finetune_epochs": 1}
    cfg = BenchConfig(
        warmup_queries=2,
        min_queries=5,
        min_duration_s=0.0,
        batch_sizes=(1,),
        throughput_min_s=0.05,
    )
    # tiny_npz has 8 training images per class: calibrate the INT8 targets on 4 per class
    overrides = []
    for t in load_targets().values():
        if "calib_per_class" in t.options:
            text = (
                Path(t.path)
                .read_text()
                .replace(f"calib_per_class = {t.options['calib_per_class']}", "calib_per_class = 4")
            )
            if "calib_per_class = 4" not in text:
                text = text.replace("[options]", "[options]\ncalib_per_class = 4", 1)
            overrides.append(tmp_path / f"{t.name}.toml")
            overrides[-1].write_text(text)
    work = tmp_path / "w"
    rows = run(spec, work, cfg=cfg, threads=1, target_files=overrides, log=lambda *_: None)

    rec = json.loads((work / "edgekit.json").read_text())
    # fine-tuning ran (device auto: the CPU here), and the report says where
    report = json.loads((work / "report.json").read_text())
    want = "cpu" if not torch.cuda.is_available() else rec["train_device"]
    assert rec["train_device"] == want and report["environment"]["train_device"] == want
    assert rec["pruning"]["after"]["macs"] < 0.56 * rec["pruning"]["before"]["macs"]
    assert rec["export_check"]["passed"]
    # the exported graph carries the physically smaller convolutions: ResNet-8's 3x3
    # convs are 16 (stem), 16/16, 32/32, 64/64 unpruned; the block-inner ones halve
    g = onnx.load(str(work / "model.onnx")).graph
    outs = sorted(t.dims[0] for t in g.initializer if len(t.dims) == 4 and t.dims[-1] == 3)
    assert outs == [8, 16, 16, 16, 32, 32, 64]

    available = {n for n, t in load_targets(overrides).items() if unavailable_reason(t) is None}
    assert {"pytorch-fp32", "ort-cpu"} <= available
    by_target = {r["target"]: r for r in rows}
    assert available <= set(by_target)
    for name in available:
        row = by_target[name]
        assert row["status"] == "ok", (name, row.get("reason"))
        assert row["latency_ms"]["p50"] > 0 and 0 <= row["top1"] <= 100
        assert (work / "artifacts" / name / "manifest.json").is_file()
    # FP32 lowering of the pruned model keeps PyTorch's predictions on the test set
    assert np.isclose(by_target["ort-cpu"]["top1"], by_target["pytorch-fp32"]["top1"])


def test_seed_fixes_the_initial_weights_of_a_model_trained_here(tiny_npz, tmp_path):
    """--seed reaches the random initialisation too (seeded before the model is built), so
    two trainings with one seed give the same weights and another seed does not."""
    import torch

    from edgekit.models import read_checkpoint
    from edgekit.pipeline import ModelSpec, prepare

    def weights(seed: int, name: str):
        torch.manual_seed(1234 + seed * 7 + len(name))  # whatever ran before must not matter
        spec = ModelSpec(dataset=f"npz:{tiny_npz}", model="resnet8", epochs=1, seed=seed)
        ws = prepare(spec, tmp_path / name, log=lambda *_: None)
        return read_checkpoint(ws.checkpoint)["state_dict"]

    a, b, c = weights(0, "a"), weights(0, "bb"), weights(1, "c")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
