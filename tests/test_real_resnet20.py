"""The acceptance check on real data: the shared ResNet-20 on the real CIFAR-10 test set."""

import pytest

from edgekit.harness import BenchConfig, bench_artifact
from edgekit.pipeline import build

from .conftest import RESNET20_TOP1

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("target", ["pytorch-fp32", "ort-cpu"])
def test_resnet20_top1_on_real_cifar10(resnet20_workspace, cifar10, target):
    rec = resnet20_workspace.record()
    assert rec["export_check"]["passed"] and rec["export_check"]["max_abs_diff"] < 1e-3
    build(resnet20_workspace, target, force=True, dataset=cifar10)
    cfg = BenchConfig(
        warmup_queries=2,
        min_queries=5,
        min_duration_s=0.0,
        batch_sizes=(1,),
        throughput_min_s=0.05,
        accuracy_batch=500,
    )
    row = bench_artifact(resnet20_workspace.artifact_dir(target), cifar10.test, cfg, threads=2)
    assert row["status"] == "ok"
    assert row["top1"] == pytest.approx(RESNET20_TOP1, abs=0.05)
    assert row["top5"] > 99.0
