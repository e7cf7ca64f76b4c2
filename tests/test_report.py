"""Reports: merging result files, CSV/Markdown contents, plots, confusion matrices."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from edgekit.errors import EdgekitError
from edgekit.harness import add_ratios, latency_stats, result_row
from edgekit.report import (
    PLOTS,
    confusion_matrix,
    load_report,
    markdown_table,
    merge_reports,
    pareto_front,
    write_all,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(target, p50, top1, size_bytes, labels, seed):
    rng = np.random.default_rng(seed)
    samples = rng.normal(p50, p50 * 0.05, 60).clip(p50 * 0.5)
    preds = np.where(rng.random(len(labels)) < top1 / 100, labels, (labels + 1) % 3)
    m = {"target": target, "backend": "fake", "precision": "fp32", "size_bytes": size_bytes}
    return result_row(
        m,
        status="ok",
        latency=latency_stats(samples),
        samples=samples,
        throughput={"1": 1000 / p50, "8": 6000 / p50},
        accuracy={
            "top1": float((preds == labels).mean() * 100),
            "top5": 100.0,
            "predictions": preds.tolist(),
        },
        threads=1,
        device="cpu",
    )


def _report(host: str, scale: float, path):
    labels = np.arange(90) % 3
    rows = [
        _row("pytorch-fp32", 4.0 * scale, 92, 1_100_000, labels, 1),
        _row("ort-cpu", 1.0 * scale, 92, 1_080_000, labels, 2),
        _row("ort-cpu-int8", 0.6 * scale, 80, 300_000, labels, 3),
    ]
    rows.append(result_row(None, status="unavailable", target="trt-fp16", reason="no GPU | here"))
    add_ratios(rows)
    env = {"host": host, "cpu": f"{host} CPU", "cores": 4, "isa": {"avx2": True}, "gpus": []}
    write_report(
        path,
        rows,
        env,
        {"min_queries": 200},
        meta={"labels": labels.tolist(), "classes": ["a", "b", "c"]},
    )
    return path


@pytest.fixture
def two_reports(tmp_path):
    return (_report("pi", 8.0, tmp_path / "pi.json"), _report("desk", 1.0, tmp_path / "desk.json"))


def test_merge_two_result_files(two_reports):
    merged = merge_reports([load_report(p) for p in two_reports], [str(p) for p in two_reports])
    assert len(merged["rows"]) == 8
    assert list(merged["runs"]) == ["pi (pi)", "desk (desk)"]
    assert [r["run"] for r in merged["rows"]] == ["pi (pi)"] * 4 + ["desk (desk)"] * 4
    pi_ort = next(r for r in merged["rows"] if r["run"] == "pi (pi)" and r["target"] == "ort-cpu")
    assert pi_ort["latency_ms"]["p50"] == pytest.approx(8.0, rel=0.1)
    assert merged["runs"]["pi (pi)"]["labels"] == (np.arange(90) % 3).tolist()
    # the same run twice keeps both, with distinct labels
    same = merge_reports([load_report(two_reports[0])] * 2)
    assert list(same["runs"]) == ["pi (pi)", "pi (pi) #2"]


def test_load_report_rejects_other_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"rows": []}))
    with pytest.raises(EdgekitError, match="not an edgekit report"):
        load_report(p)
    with pytest.raises(EdgekitError, match="not found"):
        load_report(tmp_path / "missing.json")


def test_pareto_front():
    pts = [(1.0, 80.0), (2.0, 90.0), (3.0, 85.0), (0.5, 70.0), (4.0, 91.0), (2.0, 89.0)]
    assert pareto_front(pts) == [3, 0, 1, 4]


def test_confusion_matrix_counts():
    y = np.array([0, 0, 1, 2, 2, 2])
    p = np.array([0, 1, 1, 2, 0, 2])
    cm = confusion_matrix(y, p, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert cm.sum() == 6


def test_write_all_files_csv_md_and_plots(two_reports, tmp_path):
    merged = merge_reports([load_report(p) for p in two_reports])
    out = tmp_path / "rep"
    written = write_all(merged, out, confusion=True)
    names = {p.name for p in written}
    assert {"report.json", "report.csv", "report.md", *PLOTS} <= names
    pngs = [p for p in written if p.suffix == ".png"]
    assert len(pngs) == 4 + 6  # four plots, a confusion matrix per ok row and run
    for p in pngs:
        data = p.read_bytes()
        assert len(data) > 5000 and data.startswith(PNG_MAGIC), p
    with open(out / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    r = next(x for x in rows if x["target"] == "ort-cpu-int8" and x["run"] == "desk (desk)")
    src = next(
        x for x in merged["rows"] if x["target"] == "ort-cpu-int8" and x["run"] == "desk (desk)"
    )
    for key in ("p50", "p90", "p99", "min", "max", "mean"):
        assert float(r[f"latency_{key}_ms"]) == pytest.approx(src["latency_ms"][key])
    assert float(r["throughput_bs8_ips"]) == pytest.approx(src["throughput_ips"]["8"])
    assert float(r["top1"]) == pytest.approx(src["top1"])
    assert float(r["speedup"]) == pytest.approx(src["speedup"])
    una = next(x for x in rows if x["target"] == "trt-fp16")
    assert una["status"] == "unavailable" and una["latency_p50_ms"] == ""
    md = (out / "report.md").read_text()
    lines = md.splitlines()
    assert lines[0].startswith("| target | run | status | top-1 %")
    assert f"| ort-cpu-int8 | desk (desk) | ok | {src['top1']:.2f} |" in md
    assert f"{src['latency_ms']['p50']:.3f}" in md  # below 10 ms: three decimals
    # the reason is a numbered footnote under the table, where its pipe cannot break a row
    assert "| trt-fp16 | desk (desk) | unavailable [1] |" in md and "[1] no GPU | here" in md
    assert "**pi (pi)**" in md and "**desk (desk)**" in md
    back = json.loads((out / "report.json").read_text())
    assert len(back["rows"]) == 8 and back["rows"][0]["latency_samples_ms"]


def test_plots_without_data_still_render(tmp_path):
    rows = [result_row(None, status="failed", target="x", reason="boom")]
    written = write_all({"rows": rows, "runs": {}}, tmp_path)
    for p in written:
        if p.suffix == ".png":
            assert p.read_bytes().startswith(PNG_MAGIC)
    md = markdown_table(rows)
    assert "| x | failed [1] |" in md and "[1] boom" in md


def test_confusion_needs_labels(tmp_path, two_reports):
    rep = load_report(two_reports[0])
    rep["meta"].pop("labels")
    with pytest.raises(EdgekitError, match="test labels"):
        write_all(merge_reports([rep]), tmp_path, confusion=True)


def test_cli_report_merges_and_refuses_overwrite(two_reports, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "edgekit", "report", *map(str, two_reports), "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "ort-cpu-int8" in r.stdout and "run #2: desk (desk)" in r.stdout
    assert (out / "throughput_vs_batch.png").stat().st_size > 5000
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "already exists" in r.stderr
    r = subprocess.run(
        [*cmd, "--force", "--confusion"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert len(list(out.glob("confusion_*.png"))) == 6
