"""Issue 15: the table fits, rows carry honest noise flags, plots say what they show,
bench interleaves targets, and compare has tolerances with an exit status."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgekit.harness import (
    NOISY_CV,
    NOISY_P90_P50,
    BenchConfig,
    add_ratios,
    latency_stats,
    machine_load,
    noise_flags,
    result_row,
)
from edgekit.report import (
    FIGURES,
    TARGET_ORDER,
    merge_reports,
    print_table,
    target_color,
    write_report,
)

LONG = "my-company-resnet18-int8-per-channel-qdq"  # a user's own target


def _ok(target, p50, top1=91.73, size_bytes=1_115_250_000, seed=0, noisy=False, run=None):
    rng = np.random.default_rng(seed)
    s = rng.normal(p50, p50 * (0.6 if noisy else 0.02), 200).clip(p50 * 0.5)
    m = {"target": target, "backend": "x", "precision": "fp32", "size_bytes": size_bytes}
    labels = np.arange(30) % 10
    row = result_row(
        m,
        status="ok",
        latency={**latency_stats(s), "rounds_p50": [p50] * 5},
        samples=s,
        throughput={"1": 1000 / p50, "8": 7000 / p50, "32": 20000 / p50},
        accuracy={"top1": top1, "top5": 99.5, "predictions": labels.tolist()},
        threads=1,
        device="cpu",
    )
    if run:
        row["run"] = run
    return row


def _rows():
    """Every built-in target: CPU ones measured (numbers like 1115.25), GPU ones unavailable
    with long reasons, one failed user target with a long name."""
    rows = []
    for i, t in enumerate(TARGET_ORDER):
        if t.startswith(("pytorch", "ort-cpu", "ts-")):
            rows.append(_ok(t, 1115.25 / (i + 1), top1=91.73 - i * 0.31, seed=i, noisy=i == 2))
        else:
            rows.append(
                result_row(
                    None,
                    status="unavailable",
                    target=t,
                    reason="TensorRT is not installed (it comes from JetPack or NVIDIA's "
                    "index); install edgekit-toolchain[tensorrt] on a machine with an "
                    "NVIDIA GPU and CUDA 12 or 13",
                )
            )
    rows.append(result_row(None, status="failed", target=LONG, reason="Q/DQ | lowering failed"))
    return add_ratios(rows)


def _render(rows, width=120, **kw) -> str:
    from rich.console import Console

    buf = io.StringIO()
    print_table(rows, console=Console(file=buf, width=width, color_system=None), **kw)
    return buf.getvalue()


def test_default_table_fits_120_columns_without_cutting_anything():
    rows = _rows()
    out = _render(rows)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 120, out
    assert "…" not in out and "..." not in out
    shown = [r for r in rows if r["status"] != "unavailable"]
    for r in shown:  # every name whole, on one line
        assert any(r["target"] in line for line in lines), r["target"]
    for r in shown[:-1]:  # every number whole: these are the default columns' texts
        lat = r["latency_ms"]
        for text in (f"{r['top1']:.2f}", f"{lat['p50']:.1f}", f"{lat['p90']:.1f}", "1115.2"):
            assert text in out, text
        assert f"{r['speedup']:.2f}x" in out
        assert f"{r['top1_drop']:.2f}" in out and "+" not in out  # a loss is positive
    # unavailable rows are hidden and counted; the failed row's reason is a footnote
    hidden = sum(r["status"] == "unavailable" for r in rows)
    assert "trt-int8" not in out and f"{hidden} unavailable target(s) hidden; --all shows" in out
    assert "failed [1]" in out and "[1] Q/DQ | lowering failed" in out
    assert "ok noisy" in out and f"CV (samples up to p99) > {NOISY_CV}" in out
    # narrow default: the wide-only columns are absent until --wide
    assert "p99 ms" not in out and "best img/s" not in out and "peak RSS" not in out
    wide = _render(rows, width=200, wide=True, show_all=True)
    assert "best img/s" in wide and "p99 ms" in wide and "trt-int8" in wide
    assert "unavailable [1]" in wide and "hidden" not in wide


def test_a_too_narrow_terminal_gets_the_whole_table_not_a_cut_one():
    out = _render(_rows(), width=60)
    assert LONG in out and "…" not in out and "1115.2" in out


def test_cli_honours_columns_in_a_pipe(tmp_path):
    rows = _rows()
    path = write_report(
        tmp_path / "r.json", rows, {"host": "h", "time": "2026-11-28T10:00:00Z"}, {}
    )
    env = {**os.environ, "COLUMNS": "120"}
    r = subprocess.run(
        [sys.executable, "-m", "edgekit", "report", str(path), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 1, r.stderr  # the failed row
    assert max(len(line) for line in r.stdout.splitlines()) <= 120
    assert LONG in r.stdout and "ts-fx-int8" in r.stdout and "…" not in r.stdout


def test_rows_that_did_not_run_carry_no_memory_figure():
    for status in ("unavailable", "failed"):
        assert result_row(None, status=status, target="x", reason="r")["peak_rss_mb"] is None
    assert _ok("ort-cpu", 1.0)["peak_rss_mb"] > 0


def test_noise_flags_thresholds():
    quiet = noise_flags({"cv": 0.05, "p50": 1.0, "p90": 1.1, "rounds_p50": [1.0, 1.05, 0.98]})
    assert quiet["noisy"] is False and quiet["why"] == []
    tail = noise_flags({"cv": 0.05, "p50": 1.0, "p90": NOISY_P90_P50 + 0.1})
    assert tail["noisy"] and "p90/p50" in tail["why"][0]
    drift = noise_flags({"cv": 0.05, "p50": 1.0, "p90": 1.1, "rounds_p50": [1.0, 2.0]})
    assert drift["noisy"] and "round" in drift["why"][0] and drift["round_spread"] == 2.0
    assert noise_flags({"cv": NOISY_CV + 0.01, "p50": 1.0, "p90": 1.0})["noisy"]


def test_speedup_is_the_median_of_per_round_ratios():
    base = _ok("pytorch-fp32", 4.0)
    fast = _ok("ort-cpu", 1.0)
    base["latency_ms"]["rounds_p50"] = [4.0, 4.0, 8.0]
    fast["latency_ms"]["rounds_p50"] = [1.0, 2.0, 1.0]
    add_ratios([base, fast])
    assert fast["speedup"] == 4.0 and fast["speedup_range"] == [2.0, 8.0]


def test_machine_load_is_recorded():
    load = machine_load()
    assert set(load) == {"loadavg", "cpu_mhz", "cpu_mhz_min", "cpu_mhz_max"}
    if hasattr(os, "getloadavg"):
        assert len(load["loadavg"]) == 3 and all(v >= 0 for v in load["loadavg"])


def test_bench_many_interleaves_rounds_in_rotating_order(monkeypatch):
    """Every target measures round i before any measures round i + 1, and the order
    rotates, as in benchmarks/side_by_side.py."""
    import edgekit.harness as h

    calls = []

    class FakeSession:
        def __init__(self, d, test, cfg, threads):
            self.d = d

        def latency_round(self, i, rounds):
            calls.append((i, self.d))
            return 1.0

        def finish(self):
            calls.append(("finish", self.d))
            return {"target": self.d, "status": "ok"}

        def close(self):
            pass

    monkeypatch.setattr(h, "_Session", FakeSession)
    logged = []
    cfg = BenchConfig(rounds=3)
    rows = h.bench_many(["a", "b", "c"], None, cfg, isolate=False, log=logged.append)
    assert [r["target"] for r in rows] == ["a", "b", "c"]
    rounds = [c for c in calls if c[0] != "finish"]
    assert rounds == [
        (0, "a"), (0, "b"), (0, "c"),
        (1, "b"), (1, "c"), (1, "a"),
        (2, "c"), (2, "a"), (2, "b"),
    ]  # fmt: skip
    assert [c for c in calls if c[0] == "finish"] == [("finish", d) for d in "abc"]
    # progress: each row is logged as it finishes, with its elapsed seconds
    done = [line for line in logged if line.startswith(("a: ok", "b: ok", "c: ok"))]
    assert len(done) == 3 and all(line.rstrip().endswith(" s)") for line in done)


def test_accuracy_cap_and_interleaved_real_artifacts(tiny_workspace):
    """Two real artifacts, each in its own process: capped accuracy pass, rounds recorded."""
    from edgekit.harness import bench_many
    from edgekit.pipeline import build, load_workspace_dataset

    build(tiny_workspace, "ort-cpu", force=True)
    test = load_workspace_dataset(tiny_workspace.record()).test
    cfg = BenchConfig(
        warmup_queries=2,
        min_queries=6,
        min_duration_s=0.03,
        batch_sizes=(1,),
        throughput_min_s=0.03,
        rounds=3,
        accuracy_images=7,
    )
    d = tiny_workspace.artifact_dir("ort-cpu")
    rows = bench_many([d, d], test, cfg, threads=1)
    for row in rows:
        assert row["status"] == "ok", row["reason"]
        assert row["accuracy_images"] == 7 and len(row["predictions"]) == 7
        assert row["latency_ms"]["rounds"] == 3 and len(row["latency_ms"]["rounds_p50"]) == 3
        assert row["latency_ms"]["queries"] >= 6 and isinstance(row["noisy"], bool)
        assert "cv" in row["noise"] and row["peak_rss_mb"] > 0


# ---------------------------------------------------------------------------
# Plots: read the matplotlib Figure objects, not pixels
# ---------------------------------------------------------------------------


def _colours(fig, target: str) -> set[str]:
    """Colours the figure gives ``target``: its legend entry, its line, or its box."""
    from matplotlib import colors

    found = set()
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_label().split(" @ ")[0] == target:
                found.add(colors.to_hex(line.get_color()))
        for coll in ax.collections:
            if coll.get_label() == target:
                fc = coll.get_facecolors()
                ec = coll.get_edgecolors()
                c = fc[0] if len(fc) and fc[0][3] > 0 else ec[0]
                found.add(colors.to_hex(c))
        labels = [t.get_text().split(" @ ")[0].split("  (")[0] for t in ax.get_yticklabels()]
        boxes = [p for p in ax.patches if p.get_label() != ""] or list(ax.patches)
        if target in labels and len(boxes) == len(labels):
            found.add(colors.to_hex(boxes[labels.index(target)].get_facecolor()))
    return found


def _report_two_runs():
    a = [_ok("pytorch-fp32", 4.0, 92.0), _ok("ort-cpu", 1.0, 92.0), _ok("ort-cpu-int8", 0.6, 91.5)]
    b = [_ok("ort-cpu-int8", 0.5, 91.4, seed=3), _ok("ort-cpu", 0.9, 92.0, seed=4)]
    for rows in (a, b):
        add_ratios(rows)
    env = {"host": "vm", "cpu": "AMD EPYC", "threads": 1, "time": "2026-11-28T10:00:00Z"}
    reps = [
        {"rows": a, "environment": env, "meta": {"model": "resnet20", "dataset": "cifar10"}},
        {
            "rows": b,
            "environment": {**env, "time": "2026-11-28T11:00:00Z"},
            "meta": {"model": "resnet20", "dataset": "cifar10", "run": "quiet rerun"},
        },
    ]
    return merge_reports(reps)


def test_every_plot_has_a_title_and_one_colour_per_target():
    import matplotlib.pyplot as plt

    from edgekit.report import fig_confusion, plot_context
    from edgekit.sweep import fig_sweep

    rep = _report_two_runs()
    ctx = plot_context(rep)
    # both runs are named: the default label is host and date, or the --label given
    assert "vm 2026-11-28 10:00" in ctx and "quiet rerun" in ctx
    assert "resnet20 on cifar10" in ctx and "threads 1" in ctx and "AMD EPYC" in ctx
    figs = {name: fn(rep["rows"], ctx) for name, fn in FIGURES.items()}
    row = rep["rows"][1]
    figs["confusion"] = fig_confusion(row, np.arange(30) % 10, context=ctx)
    sweep_rows = [
        {**_ok(t, p, top1, seed=k), "pruning_ratio": ratio}
        for k, (t, ratio, p, top1) in enumerate(
            [("ort-cpu", 0.0, 1.0, 92), ("ort-cpu", 0.5, 0.7, 91), ("ort-cpu", 0.3, 0.8, 91.5)]
        )
    ]
    figs["sweep"] = fig_sweep(sweep_rows, ctx)
    try:
        for name, fig in figs.items():
            titles = [ax.get_title() for ax in fig.axes] + [
                fig._suptitle.get_text() if fig._suptitle else ""
            ]
            assert any("resnet20 on cifar10" in t for t in titles), (name, titles)
        for target in ("ort-cpu", "ort-cpu-int8", "pytorch-fp32"):
            seen = set()
            for name in FIGURES:
                seen |= _colours(figs[name], target)
            assert seen == {target_color(target)}, (target, seen)
        assert _colours(figs["sweep"], "ort-cpu") == {target_color("ort-cpu")}
        # the sweep's latency line is joined in x order and its points carry their ratio
        ax = figs["sweep"].axes[1]
        xs = list(ax.get_lines()[0].get_xdata())
        assert xs == sorted(xs)
        assert {t.get_text() for t in ax.texts} == {"0", "0.3", "0.5"}
        # small ranges: linear axes with plain ticks; throughput ticks only where measured
        for name in ("size_vs_accuracy.png", "accuracy_vs_latency.png"):
            f = figs[name]
            f.canvas.draw()
            ticks = [t.get_text() for t in f.axes[0].get_xticklabels()]
            assert f.axes[0].get_xscale() == "linear", name
            assert ticks and not any("10^" in t or "times" in t for t in ticks), ticks
        f = figs["throughput_vs_batch.png"]
        f.canvas.draw()
        assert [t.get_text() for t in f.axes[0].get_xticklabels()] == ["1", "8", "32"]
    finally:
        for fig in figs.values():
            plt.close(fig)


def test_target_colours_are_fixed_and_distinct_for_built_ins():
    cols = [target_color(t) for t in TARGET_ORDER]
    assert len(set(cols)) == len(cols)
    assert target_color("ort-cpu") == target_color("ort-cpu")
    assert target_color(LONG) == target_color(LONG)


def test_report_of_a_run_report_keeps_labels_for_confusion(tmp_path):
    """`edgekit run` writes a merged report; `report --confusion` on it must find the labels."""
    from edgekit.report import make_report, write_all

    labels = (np.arange(30) % 10).tolist()
    rows = add_ratios([_ok("pytorch-fp32", 4.0), _ok("ort-cpu", 1.0)])
    rep = {
        "schema": "edgekit-report/1",
        "environment": {"host": "vm", "time": "2026-11-28T10:00:00Z"},
        "config": {},
        "meta": {"model": "resnet20", "dataset": "cifar10", "labels": labels, "run": "mine"},
        "rows": rows,
    }
    write_all(merge_reports([rep]), tmp_path / "run", stem="report")
    merged, written = make_report(
        [tmp_path / "run" / "report.json"], tmp_path / "out", confusion=True
    )
    names = sorted(p.name for p in written if p.name.startswith("confusion_"))
    assert names == ["confusion_ort-cpu.png", "confusion_pytorch-fp32.png"]
    assert list(merged["runs"]) == ["mine"]


# ---------------------------------------------------------------------------
# compare: tolerances and exit status
# ---------------------------------------------------------------------------


def test_tolerances_by_hand():
    from edgekit.compare import Tolerances, check_tolerances, compare_logits

    a = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    same = compare_logits(a, a.copy())
    assert check_tolerances(same, Tolerances(atol=0, rtol=0, min_agreement=1, min_cosine=1)) == []
    b = a + np.array([[0.0, 0.5], [0.0, 0.0], [0.0, 0.0]])
    r = compare_logits(a, b)
    assert check_tolerances(r, Tolerances(atol=0.6, min_cosine=0.8)) == []
    fails = check_tolerances(r, Tolerances(atol=0.1, min_cosine=0.8))
    assert len(fails) == 1 and "1 of 6 logits" in fails[0]
    # a statistic instead of every element (Polygraphy's --check-error-stat): the mean passes
    assert check_tolerances(r, Tolerances(atol=0.1, check_error_stat="mean", min_cosine=0.8)) == []
    flip = compare_logits(a, a[:, ::-1].copy())
    msgs = check_tolerances(flip, Tolerances())
    assert any("agreement" in m for m in msgs) and any("cosine" in m for m in msgs)


def _edgekit(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_compare_exit_status_and_onnx_without_manifest(tiny_workspace, tmp_path):
    from edgekit.pipeline import build

    toml = (Path(__file__).parents[1] / "targets" / "ort-cpu-int8.toml").read_text()
    tfile = tmp_path / "tiny-int8.toml"  # the tiny set has 8 training images per class
    tfile.write_text(
        toml.replace('name = "ort-cpu-int8"', 'name = "tiny-int8"').replace(
            "calib_per_class = 32", "calib_per_class = 4"
        )
    )
    build(tiny_workspace, "ort-cpu", force=True)
    build(tiny_workspace, "tiny-int8", [tfile], force=True)
    art = tiny_workspace.artifacts
    w = tiny_workspace.root
    same = _edgekit("compare", art / "ort-cpu", art / "ort-cpu", "-w", w, "--images", "20",
                    "--atol", "0", "--rtol", "0", "--min-agreement", "1", "--min-cosine", "1")  # fmt: skip
    assert same.returncode == 0, same.stderr
    assert "PASS" in same.stdout and "100.00%" in same.stdout
    # INT8 against FP32 with a tolerance only identical logits meet: beyond it, exit 1
    diff = _edgekit("compare", art / "ort-cpu", art / "tiny-int8", "-w", w, "--images",
                    "20", "--atol", "1e-6", "--rtol", "0")  # fmt: skip
    assert diff.returncode == 1, diff.stderr
    assert "FAIL" in diff.stdout and "logits differ" in diff.stdout
    # an ONNX file without a manifest (as --onnx-only writes): preprocessing from its work dir
    onnx = _edgekit("compare", art / "ort-cpu", w / "model.onnx", "--images", "20",
                    "--atol", "1e-4", "--rtol", "1e-4")  # fmt: skip
    assert onnx.returncode == 0, onnx.stderr
    assert "no manifest" in onnx.stdout
    bad = _edgekit("compare", art / "ort-cpu", art / "ort-cpu", "-w", w, "--min-agreement", "2")
    assert bad.returncode == 2 and "--min-agreement" in bad.stderr


def test_report_json_records_the_cap_and_the_load(tmp_path):
    rows = add_ratios([_ok("ort-cpu", 1.0)])
    rows[0]["accuracy_images"] = 30
    from edgekit.harness import environment

    env = environment(1, {"start": machine_load(), "end": machine_load()})
    p = write_report(tmp_path / "r.json", rows, env, BenchConfig(accuracy_images=30).to_dict())
    d = json.loads(p.read_text())
    assert d["config"]["accuracy_images"] == 30 and d["rows"][0]["accuracy_images"] == 30
    assert set(d["environment"]["load"]) == {"start", "end"}
    assert "first 30 test images" in _render(d["rows"])


def test_cli_table_in_a_real_pty_at_120_columns(tmp_path):
    """The issue's bar as a user sees it: a terminal (a pty) 120 columns wide."""
    import pty
    import re
    import select

    rows = _rows()
    path = write_report(
        tmp_path / "r.json", rows, {"host": "h", "time": "2026-11-28T10:00:00Z"}, {}
    )
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "LINES": "50", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit", "report", str(path), "-o", str(tmp_path / "o")],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 120)
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed its end
                break
            if not data:
                break
            chunks.append(data)
    finally:
        proc.wait(timeout=120)
        os.close(master)
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    lines = [line.rstrip("\r") for line in out.splitlines()]
    assert proc.returncode == 1, out  # the failed row
    table = [line for line in lines if "ms" in line or "│" in line or "ok" in line]
    assert table and max(len(line) for line in lines) <= 120, out
    assert "…" not in out
    for r in rows:
        if r["status"] != "unavailable":
            assert any(r["target"] in line for line in lines), r["target"]
    assert "1115.2" in out


def test_one_stall_does_not_flag_a_row_but_frequent_stalls_do():
    from edgekit.harness import latency_stats

    rng = np.random.default_rng(0)
    steady = 1.0 + 0.02 * rng.standard_normal(300)
    one_stall = latency_stats(np.append(steady, 40.0))  # a page fault among 300 queries
    assert one_stall["cv"] > NOISY_CV and one_stall["cv_p99"] < 0.05
    assert not noise_flags(one_stall)["noisy"]
    stalls = steady.copy()
    stalls[::20] = 3.0  # one query in twenty stalls: the machine is busy
    busy = latency_stats(stalls)
    assert busy["cv_p99"] > NOISY_CV and noise_flags(busy)["noisy"]
