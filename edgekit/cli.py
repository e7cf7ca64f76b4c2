"""The ``edgekit`` command line: a thin Typer layer over :mod:`edgekit.pipeline`.

Nothing heavy is imported at module level, so ``edgekit --help`` stays fast and
works without torch. A user mistake (:class:`EdgekitError`) prints one line,
``error: ...``, and exits with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from edgekit.errors import EdgekitError

app = typer.Typer(
    name="edgekit",
    help="From a PyTorch classifier to measured edge artifacts: export, build per target, "
    "benchmark accuracy, latency and size.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

WorkDir = Annotated[Path, typer.Option("--work-dir", "-w", help="Work directory.")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite existing artifacts.")]
Threads = Annotated[
    int | None,
    typer.Option("--threads", help="Intra-op threads of the backend (default: the backend's own)."),
]
Quick = Annotated[bool, typer.Option("--quick", help="Short measurement rules (demo/tests).")]
TargetFiles = Annotated[
    list[Path] | None, typer.Option("--target-file", help="Extra target TOML file(s).")
]


def _log(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False).print(f"[dim]{msg}[/dim]")


def _spec(
    dataset, data_dir, model, weights, num_classes, norm, epochs, exporter, simplify, opset, seed
):
    from edgekit.pipeline import ModelSpec

    return ModelSpec(
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        model=model,
        weights=str(weights) if weights else None,
        num_classes=num_classes,
        normalization=norm,
        epochs=epochs,
        exporter=exporter,
        simplify=simplify,
        opset=opset,
        seed=seed,
    )


def _bench_config(
    quick: bool, min_queries: int | None, min_duration: float | None, batch_sizes: str | None
):
    from edgekit.harness import BenchConfig

    cfg = BenchConfig.quick() if quick else BenchConfig()
    if min_queries is not None:
        cfg.min_queries = min_queries
    if min_duration is not None:
        cfg.min_duration_s = min_duration
    if batch_sizes:
        try:
            cfg.batch_sizes = tuple(int(b) for b in batch_sizes.split(","))
        except ValueError:
            raise EdgekitError(
                f"--batch-sizes must be integers like 1,8,32, got {batch_sizes!r}"
            ) from None
        if min(cfg.batch_sizes) < 1:
            raise EdgekitError("batch sizes must be at least 1")
    return cfg


DatasetOpt = Annotated[
    str,
    typer.Option(
        "--dataset", "-d", help="digits | cifar10 | cifar100 | npz:PATH | imagefolder:PATH"
    ),
]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Where cifar10/100 live.")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="Zoo name (resnet18, resnet20, ...) or package.module:factory."
    ),
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights", help="Checkpoint (loaded with weights_only=True); trains briefly if absent."
    ),
]
NumClassesOpt = Annotated[int | None, typer.Option("--num-classes", help="Default: the dataset's.")]
NormOpt = Annotated[
    str | None,
    typer.Option(
        "--norm", help="Normalization: cifar10 | cifar100 | imagenet | half | 'm,m,m/s,s,s'."
    ),
]
EpochsOpt = Annotated[
    int | None, typer.Option("--epochs", help="Training epochs without --weights.")
]
ExporterOpt = Annotated[str, typer.Option("--exporter", help="dynamo | torchscript")]
SimplifyOpt = Annotated[bool, typer.Option("--simplify/--no-simplify", help="Run onnxslim.")]
OpsetOpt = Annotated[int, typer.Option("--opset", help="ONNX opset (>= 17).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for training and calibration.")]


@app.command()
def export(
    work_dir: WorkDir = Path("edgekit-work"),
    dataset: DatasetOpt = "digits",
    data_dir: DataDirOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    num_classes: NumClassesOpt = None,
    norm: NormOpt = None,
    epochs: EpochsOpt = None,
    exporter: ExporterOpt = "dynamo",
    simplify: SimplifyOpt = True,
    opset: OpsetOpt = 18,
    seed: SeedOpt = 0,
    force: Force = False,
):
    """Export a model to ONNX (WORK/model.onnx), checked against PyTorch on real images."""
    from edgekit.pipeline import prepare

    ws = prepare(
        _spec(
            dataset,
            data_dir,
            model,
            weights,
            num_classes,
            norm,
            epochs,
            exporter,
            simplify,
            opset,
            seed,
        ),
        work_dir,
        force=force,
        log=_log,
    )
    typer.echo(f"{ws.onnx}")


@app.command()
def build(
    target: Annotated[
        str, typer.Option("--target", "-t", help="Target name (see edgekit targets).")
    ],
    work_dir: WorkDir = Path("edgekit-work"),
    target_file: TargetFiles = None,
    force: Force = False,
):
    """Build one target from the work directory into WORK/artifacts/TARGET."""
    from edgekit.pipeline import Workspace
    from edgekit.pipeline import build as do_build

    m = do_build(Workspace(work_dir), target, target_file, force=force)
    typer.echo(f"{Path(work_dir) / 'artifacts' / m['target']}  ({m['size_bytes'] / 1e6:.3f} MB)")


@app.command()
def bench(
    target: Annotated[
        list[str] | None,
        typer.Option("--target", "-t", help="Target(s) built in the work directory."),
    ] = None,
    artifact: Annotated[
        list[Path] | None,
        typer.Option("--artifact", "-a", help="Artifact directory (with manifest.json)."),
    ] = None,
    work_dir: WorkDir = Path("edgekit-work"),
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", "-d", help="Test data (default: the work directory's)."),
    ] = None,
    data_dir: DataDirOpt = None,
    threads: Threads = None,
    quick: Quick = False,
    min_queries: Annotated[int | None, typer.Option(help="Minimum timed queries.")] = None,
    min_duration: Annotated[float | None, typer.Option(help="Minimum timed seconds.")] = None,
    batch_sizes: Annotated[
        str | None, typer.Option(help="Throughput sweep, e.g. 1,8,32,128.")
    ] = None,
    no_accuracy: Annotated[
        bool, typer.Option("--no-accuracy", help="Skip the accuracy pass.")
    ] = False,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline/--no-baseline", help="Add the pytorch-fp32 row (work directory only)."
        ),
    ] = True,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="JSON report path.")] = None,
):
    """Benchmark artifacts: latency percentiles, throughput, size and top-1/top-5."""
    from edgekit.harness import add_ratios, bench_artifact, check_threads, environment
    from edgekit.pipeline import Workspace, load_workspace_dataset
    from edgekit.report import print_table, write_report

    for w in check_threads(threads):
        _log(f"warning: {w}")
    cfg = _bench_config(quick, min_queries, min_duration, batch_sizes)
    cfg.accuracy = not no_accuracy
    dirs: list[Path] = list(artifact or [])
    ws = Workspace(work_dir)
    if target:
        names = list(target)
        if baseline and "pytorch-fp32" not in names and ws.artifact_dir("pytorch-fp32").is_dir():
            names.insert(0, "pytorch-fp32")
        for t in names:
            d = ws.artifact_dir(t)
            if not d.is_dir():
                raise EdgekitError(
                    f"target {t} is not built in {work_dir}",
                    f"run: edgekit build --target {t} --work-dir {work_dir}",
                )
            dirs.append(d)
    if not dirs:
        raise EdgekitError("nothing to benchmark", "pass --target NAME or --artifact DIR")
    if dataset:
        from edgekit.data import load_dataset

        test = load_dataset(dataset, data_dir).test
    elif target:
        test = load_workspace_dataset(ws.record()).test
    else:
        test = None
        if cfg.accuracy:
            _log("no --dataset given: accuracy is skipped, latency uses random images")
    rows = []
    for d in dirs:
        _log(f"benchmarking {d}")
        rows.append(bench_artifact(d, test, cfg, threads))
    add_ratios(rows)
    print_table(rows)
    out = output or (ws.root / "bench.json" if target else None)
    if out:
        write_report(out, rows, environment(threads), cfg.to_dict())
        _log(f"wrote {out}")


@app.command()
def run(
    work_dir: WorkDir = Path("edgekit-work"),
    dataset: DatasetOpt = "digits",
    data_dir: DataDirOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    num_classes: NumClassesOpt = None,
    norm: NormOpt = None,
    epochs: EpochsOpt = None,
    targets: Annotated[
        str | None, typer.Option("--targets", help="Comma-separated targets (default: all).")
    ] = None,
    target_file: TargetFiles = None,
    threads: Threads = None,
    quick: Quick = False,
    exporter: ExporterOpt = "dynamo",
    simplify: SimplifyOpt = True,
    opset: OpsetOpt = 18,
    seed: SeedOpt = 0,
    force: Force = False,
):
    """The whole pipeline: data, model (trained briefly without --weights), ONNX, every
    target available here, and the benchmark. With no arguments: digits + ResNet-8."""
    from edgekit.harness import BenchConfig, check_threads
    from edgekit.pipeline import run as do_run
    from edgekit.report import print_table

    for w in check_threads(threads):
        _log(f"warning: {w}")
    spec = _spec(
        dataset,
        data_dir,
        model,
        weights,
        num_classes,
        norm,
        epochs,
        exporter,
        simplify,
        opset,
        seed,
    )
    names = [t.strip() for t in targets.split(",") if t.strip()] if targets else None
    if names and "pytorch-fp32" not in names:
        names.insert(0, "pytorch-fp32")
    cfg = BenchConfig.quick() if quick else BenchConfig()
    rows = do_run(
        spec,
        work_dir,
        targets=names,
        target_files=target_file,
        cfg=cfg,
        threads=threads,
        force=force,
        log=_log,
    )
    print_table(rows, title=f"edgekit run: {spec.model or 'default model'} on {dataset}")
    _log(f"wrote {Path(work_dir) / 'report.json'}")


@app.command("targets")
def targets_cmd(target_file: TargetFiles = None):
    """List every target and whether it can be built and run on this machine."""
    from rich.console import Console
    from rich.table import Table

    from edgekit.targets import load_targets, unavailable_reason

    t = Table(title="edgekit targets", header_style="bold")
    for c in ("target", "backend", "precision", "available", "description / reason"):
        t.add_column(c)
    for tg in load_targets(target_file).values():
        reason = unavailable_reason(tg)
        t.add_row(
            tg.name,
            tg.backend,
            tg.precision,
            "yes" if not reason else "no",
            reason or tg.description,
        )
    Console().print(t)


@app.command()
def doctor(
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON (for machines).")
    ] = False,
    require_gpu: Annotated[
        bool,
        typer.Option("--require-gpu", help="Exit with status 1 when no CUDA GPU is found."),
    ] = False,
    target_file: TargetFiles = None,
):
    """What this machine can do: CPU ISA, GPU and its fast precisions, runtime versions,
    and which targets can run here (and why not)."""
    from edgekit.doctor import doctor as do_doctor
    from edgekit.doctor import print_report

    rep = do_doctor(target_file)
    if json_out:
        import json

        typer.echo(json.dumps(rep, indent=2))
    else:
        print_report(rep)
    if require_gpu and not rep["gpu"]["available"]:
        print(f"error: --require-gpu: {rep['gpu']['reason']}", file=sys.stderr)
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point: maps user errors to one line and exit status 2."""
    try:
        app()
    except EdgekitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
