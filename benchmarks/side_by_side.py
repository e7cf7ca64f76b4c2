"""Side-by-side CPU benchmark: edgekit's CPU targets against PyTorch eager and OpenVINO.

Measures, on this machine and in one run, at batch 1 and one thread:

- every edgekit target that :func:`edgekit.targets.load_targets` lists with a CPU
  backend (onnxruntime, torchscript, pytorch) and that is available here;
- PyTorch eager FP32 (the ``pytorch-fp32`` target): the baseline of every ratio;
- when the ``peers`` extra is installed, OpenVINO FP32 and OpenVINO INT8
  (post-training quantization with NNCF, default preset), which is what an
  Intel-CPU user would pick instead.

Models: ResNet-20 (He et al. 2016) with the shared pretrained CIFAR-10 weights,
and ResNet-18 with the CIFAR stem with the shared trained checkpoint
(``../shared/models/resnet18-cifar10-1ff45430.pt``, FP32 94.76%; random weights,
latency only, when it is absent and no ``--resnet18-weights`` is given).

Method: all runners are loaded in one process, then the latency is measured in
``--rounds`` interleaved rounds (the order of the targets rotates every round);
each round is a short MLPerf-SingleStream-style run (warm-up, then at least
``--round-queries`` queries and ``--round-seconds`` seconds) on one real,
preprocessed test image. A target's p50 is the median of its per-round p50s,
with the min-max over rounds; its speedup is the median of the per-round ratios
``eager p50 / target p50`` (and their min-max), and likewise its ratio to the
OpenVINO INT8 peer (``target p50 / peer p50``, below 1 = faster than OpenVINO),
so slow drifts of the machine's
load hit both sides of a ratio alike. INT8 targets are calibrated on
class-balanced training images (edgekit's own sampler; OpenVINO gets the same
``--calib-per-class`` images per class). Top-1 is a separate pass over the whole
real CIFAR-10 test split.

Usage (from the repository root)::

    uv sync --extra cpu --extra build --extra openvino --extra executorch
    uv run --no-sync python benchmarks/side_by_side.py --models resnet18

It writes ``benchmarks/results/side_by_side.{md,json}`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEKIT_SHARED", REPO.parent / "shared"))
CPU_BACKENDS = ("pytorch", "onnxruntime", "torchscript", "openvino", "executorch")
BASELINE = "pytorch-fp32"
#: The peer every INT8 target is held against (issue 18: ort-cpu-int8 <= 1.05x its latency).
PEER_INT8 = "openvino-int8-nncf"


def log(msg: str) -> None:
    print(f"[side_by_side] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# OpenVINO peers
# ---------------------------------------------------------------------------


class OpenVinoRunner:
    """An OpenVINO compiled model (CPU plugin) behind edgekit's Runner protocol."""

    device = "cpu"
    batch_range = (1, None)

    def __init__(self, model, threads: int):
        import openvino as ov

        core = ov.Core()
        cfg = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self.compiled = core.compile_model(model, "CPU", cfg)
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.request.infer({0: x})[0])

    def close(self) -> None:
        self.request = None
        self.compiled = None


def openvino_peers(ws, ctx, per_class: int, out_dir: Path, threads: int) -> list[dict]:
    """OpenVINO FP32 and INT8 (NNCF) entries: ``{"name", "runner"|"reason", "size_mb"}``."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        reason = "openvino not installed (uv sync --extra peers)"
        return [
            {"name": "openvino-fp32", "reason": reason},
            {"name": "openvino-int8-nncf", "reason": reason},
        ]
    import openvino as ov

    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    core = ov.Core()
    fp32 = core.read_model(str(ws.onnx))
    ov.save_model(fp32, str(out_dir / "fp32.xml"), compress_to_fp16=False)
    entries.append(
        {
            "name": "openvino-fp32",
            "engine": f"OpenVINO {ov.__version__.split('-')[0]}",
            "precision": "fp32",
            "runner": OpenVinoRunner(fp32, threads),
            "size_mb": (out_dir / "fp32.bin").stat().st_size / 1e6,
        }
    )
    if importlib.util.find_spec("nncf") is None:
        entries.append({"name": "openvino-int8-nncf", "reason": "nncf not installed"})
        return entries
    try:
        import nncf

        x, _, _ = ctx.calibration_set(per_class)
        data = nncf.Dataset([x[i : i + 1] for i in range(len(x))])
        int8 = nncf.quantize(core.read_model(str(ws.onnx)), data, subset_size=len(x))
        ov.save_model(int8, str(out_dir / "int8.xml"), compress_to_fp16=False)
        entries.append(
            {
                "name": "openvino-int8-nncf",
                "engine": f"OpenVINO + NNCF {nncf.__version__}",
                "precision": "int8",
                "runner": OpenVinoRunner(int8, threads),
                "size_mb": (out_dir / "int8.bin").stat().st_size / 1e6,
            }
        )
    except Exception as e:  # a peer failing must not stop the benchmark
        entries.append({"name": "openvino-int8-nncf", "reason": f"{type(e).__name__}: {e}"})
    return entries


# ---------------------------------------------------------------------------
# edgekit targets
# ---------------------------------------------------------------------------


def workspace(model: str, weights: Path | None, work: Path, cifar: Path):
    """A work directory for ``model`` (reused when it already holds the export)."""
    from edgekit.pipeline import ModelSpec, Workspace, prepare

    ws = Workspace(work / model)
    if ws.record_path.is_file() and ws.onnx.is_file():
        return ws
    if weights is None:  # random weights: latency only
        from edgekit.models import build_model, save_checkpoint

        work.mkdir(parents=True, exist_ok=True)
        weights = work / f"{model}-random.pt"
        import torch

        torch.manual_seed(0)
        save_checkpoint(weights, build_model(model, 10), model, 10, force=True)
    spec = ModelSpec(dataset=f"npz:{cifar}", model=model, weights=str(weights))
    return prepare(spec, ws.root, force=True, log=log)


def edgekit_entries(ws, ctx, threads: int, rebuild: bool) -> list[dict]:
    """Build (or reuse) every available edgekit CPU target and open its runner."""
    from edgekit.build import build_target, open_artifact
    from edgekit.manifest import read_manifest
    from edgekit.targets import load_targets, unavailable_reason

    out = []
    targets = [
        t
        for t in load_targets().values()
        if t.backend in CPU_BACKENDS and t.requires.get("device", "cpu") == "cpu"
    ]
    targets.sort(key=lambda t: (t.name != BASELINE, t.name))
    for t in targets:
        e = {"name": t.name, "precision": t.precision, "engine": f"edgekit {t.backend}"}
        reason = unavailable_reason(t)
        if reason:
            out.append({**e, "reason": reason})
            continue
        d = ws.artifact_dir(t.name)
        try:
            if rebuild or not (d / "manifest.json").is_file():
                log(f"building {t.name}")
                build_target(t, ctx, d, force=True)
            runner, manifest = open_artifact(d, threads)
            e.update(runner=runner, size_mb=read_manifest(d)["size_bytes"] / 1e6)
        except Exception as err:
            e["reason"] = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
        out.append(e)
    return out


# ---------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------


def interleaved_latency(entries, x1, rounds: int, queries: int, seconds: float) -> None:
    """Fill ``entry["round_p50"]`` (ms per round) with interleaved SingleStream rounds."""
    from edgekit.harness import BenchConfig, measure_latency

    live = [e for e in entries if "runner" in e]
    cfg = BenchConfig(warmup_queries=10, min_queries=queries, min_duration_s=seconds)
    for e in live:
        e["round_p50"], e["samples"] = [], []
    for r in range(rounds):
        order = live[r % len(live) :] + live[: r % len(live)]
        for e in order:
            stats, samples = measure_latency(e["runner"], x1, cfg)
            e["round_p50"].append(stats["p50"])
            e["samples"].extend(samples.tolist())
        log(
            f"round {r + 1}/{rounds}: "
            + ", ".join(f"{e['name']} {e['round_p50'][-1]:.3f}" for e in live)
        )


def summarize(entries) -> None:
    """Median p50, its min-max, and per-round speedups against the eager baseline."""
    from edgekit.harness import latency_stats

    base = next((e for e in entries if e["name"] == BASELINE and e.get("round_p50")), None)
    peer = next((e for e in entries if e["name"] == PEER_INT8 and e.get("round_p50")), None)
    for e in entries:
        if not e.get("round_p50"):
            continue
        rp = e["round_p50"]
        e["p50_ms"] = statistics.median(rp)
        e["p50_range"] = (min(rp), max(rp))
        e["pooled"] = latency_stats(np.asarray(e["samples"]))
        if base:
            ratios = [b / t for b, t in zip(base["round_p50"], rp, strict=True)]
            e["speedup"] = statistics.median(ratios)
            e["speedup_range"] = (min(ratios), max(ratios))
        if peer:
            vs = [t / p for t, p in zip(rp, peer["round_p50"], strict=True)]
            e["vs_ov_int8"] = statistics.median(vs)
            e["vs_ov_int8_range"] = (min(vs), max(vs))
        if base and base.get("size_mb") and e.get("size_mb"):
            e["size_ratio"] = e["size_mb"] / base["size_mb"]


def accuracy(entries, test, pre) -> None:
    from edgekit.harness import measure_accuracy

    for e in entries:
        if "runner" in e:
            log(f"accuracy pass: {e['name']}")
            try:
                e["top1"] = measure_accuracy(e["runner"], test.x, test.y, pre, 128)["top1"]
            except Exception as err:
                e["top1_error"] = f"{type(err).__name__}: {err}"


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def _f(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def markdown(model: str, entries, weights_note: str) -> str:
    lines = [
        f"### {model} ({weights_note})",
        "",
        "| target | engine | precision | top-1 % | p50 ms (median) | p50 min-max | p90 ms | "
        "speedup vs eager (median) | speedup min-max | latency / OV INT8 (median) | "
        "/ OV INT8 min-max | size MB | size ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        if "p50_ms" not in e:
            lines.append(
                f"| {e['name']} | {e.get('engine', '')} | {e.get('precision', '')} | "
                f"| | | | | | | | | | (not measured: {e.get('reason', 'failed')}) |"
            )
            continue
        lo, hi = e["p50_range"]
        slo, shi = e.get("speedup_range", (None, None))
        vlo, vhi = e.get("vs_ov_int8_range", (None, None))
        lines.append(
            f"| {e['name']} | {e.get('engine', '')} | {e.get('precision', '')} | "
            f"{_f(e.get('top1'))} | {e['p50_ms']:.3f} | {lo:.3f}-{hi:.3f} | "
            f"{e['pooled']['p90']:.3f} | {_f(e.get('speedup'))}x | "
            f"{_f(slo)}-{_f(shi)}x | {_f(e.get('vs_ov_int8'), '.3f')}x | "
            f"{_f(vlo, '.3f')}-{_f(vhi, '.3f')}x | {_f(e.get('size_mb'), '.3f')} | "
            f"{_f(e.get('size_ratio'), '.3f')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet20,resnet18")
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "side_by_side")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--round-queries", type=int, default=50)
    ap.add_argument("--round-seconds", type=float, default=2.0)
    ap.add_argument("--calib-per-class", type=int, default=32)
    ap.add_argument("--resnet18-weights", type=Path, default=None)
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--rebuild", action="store_true", help="Rebuild edgekit artifacts.")
    ap.add_argument("--quick", action="store_true", help="3 short rounds (smoke test).")
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds, a.round_queries, a.round_seconds = 3, 20, 0.3

    cifar = SHARED / "data" / "cifar10"
    r20 = SHARED / "models" / "resnet20-12fca82f.th"
    r18 = SHARED / "models" / "resnet18-cifar10-1ff45430.pt"
    if not (cifar / "cifar10-test.npz").is_file():
        print(f"error: CIFAR-10 not found in {cifar} (set EDGEKIT_SHARED)", file=sys.stderr)
        return 2

    import torch

    from edgekit.data import load_dataset
    from edgekit.harness import environment
    from edgekit.pipeline import build_context

    torch.set_num_threads(a.threads)
    ds = load_dataset(f"npz:{cifar}")
    env = environment(a.threads)
    load_start = os.getloadavg()
    t_start = time.time()
    sections, results = [], {}
    for model in [m.strip() for m in a.models.split(",") if m.strip()]:
        weights = r20 if model == "resnet20" and r20.is_file() else None
        if model == "resnet18":
            weights = a.resnet18_weights or (r18 if r18.is_file() else None)
        note = "pretrained CIFAR-10 weights" if weights else "random weights: top-1 not reported"
        log(f"== {model} ({note})")
        ws = workspace(model, weights, a.work, cifar)
        ctx = build_context(ws, ds)
        entries = edgekit_entries(ws, ctx, a.threads, a.rebuild)
        entries += openvino_peers(ws, ctx, a.calib_per_class, ws.root / "openvino", a.threads)
        x1 = ctx.preprocess.apply(ds.test.x[:1])
        interleaved_latency(entries, x1, a.rounds, a.round_queries, a.round_seconds)
        summarize(entries)
        if weights and not a.no_accuracy:
            accuracy(entries, ds.test, ctx.preprocess)
        for e in entries:
            if "runner" in e:
                e["runner"].close()
        sections.append(markdown(model, entries, note))
        results[model] = [
            {k: v for k, v in e.items() if k not in ("runner", "samples")} for e in entries
        ]
    load_end = os.getloadavg()
    isa = ", ".join(k.upper() for k, v in env["isa"].items() if v)
    v = env["versions"]
    header = (
        f"Machine: {env['cpu']}, {env['cores']} cores, ISA {isa}; "
        f"threads {a.threads}, batch 1; load average {load_start[0]:.1f} at start, "
        f"{load_end[0]:.1f} at end; {env['time']}.\n"
        f"Versions: torch {v.get('torch', '-')}, onnxruntime {v.get('onnxruntime', '-')}, "
        f"openvino {v.get('openvino', '-')}, nncf {v.get('nncf', '-')}.\n"
        f"Latency: {a.rounds} interleaved rounds of >= {a.round_queries} queries and "
        f">= {a.round_seconds:g} s per target; p50 = median of the round p50s; "
        f"speedup = median of per-round (eager p50 / target p50); "
        f"latency / OV INT8 = median of per-round (target p50 / {PEER_INT8} p50).\n"
    )
    text = header + "\n" + "\n".join(sections)
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{a.out}.md").write_text(text)
    Path(f"{a.out}.json").write_text(
        json.dumps(
            {
                "environment": env,
                "args": {k: str(v) for k, v in vars(a).items()},
                "load_average": [load_start, load_end],
                "seconds": round(time.time() - t_start, 1),
                "results": results,
            },
            indent=2,
            default=str,
        )
    )
    log(f"wrote {a.out}.md and {a.out}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
