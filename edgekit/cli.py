"""The ``edgekit`` command line: a thin Typer layer over :mod:`edgekit.api`.

Nothing heavy is imported at module level, so ``edgekit --help`` stays fast and
works without torch. A user mistake (:class:`EdgekitError`) prints one line,
``error: ...``, and exits with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
import typer.core

from edgekit.api import MAX_BATCH, MAX_MIN_DURATION_S, MAX_MIN_QUERIES, check_numbers  # noqa: F401
from edgekit.errors import EdgekitError, at_least

app = typer.Typer(
    name="edgekit",
    help="From a PyTorch classifier to measured edge artifacts: export, build per target, "
    "benchmark accuracy, latency and size.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: Typer's rich help formatter imports ~0.6 s of modules (markdown-it,
    # pygments); without it `edgekit --help` stays under 0.5 s (benchmarks/cli_startup.py).
    rich_markup_mode=None,
)


class _PlainUsage(typer.core.TyperCommand):
    """A command whose usage line names its arguments plainly (``REFERENCE CANDIDATE``),
    without Typer's ``{...}`` around required ones."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [
            p[1:-1] if p[:1] == "{" and p[-1:] == "}" else p
            for p in super().collect_usage_pieces(ctx)
        ]


def _version(value: bool) -> None:
    if value:
        from edgekit._meta import DIST_NAME, __version__

        typer.echo(f"edgekit {__version__} ({DIST_NAME})")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """From a PyTorch classifier to measured edge artifacts: export, build per target,
    benchmark accuracy, latency and size."""


WorkDir = Annotated[Path, typer.Option("--work-dir", "-w", help="Work directory.")]
Force = Annotated[
    bool, typer.Option("--force", help="Replace the work directory's model, ONNX and artifacts.")
]
BuildForce = Annotated[bool, typer.Option("--force", help="Replace existing artifacts.")]
TargetsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--target",
        "-t",
        help="Target name (see edgekit targets); repeat it or give a comma list: -t a,b.",
    ),
]
Threads = Annotated[
    int | None,
    typer.Option("--threads", help="Intra-op threads of the backend (default: the backend's own)."),
]
Quick = Annotated[bool, typer.Option("--quick", help="Short measurement rules (demo/tests).")]
AllTargets = Annotated[
    list[str] | None,
    typer.Option(
        "--target",
        "-t",
        "--targets",
        help="Target name(s), repeatable or comma-separated (default: all). "
        "--targets is the old spelling.",
    ),
]
TargetFiles = Annotated[
    list[Path] | None,
    typer.Option("--target-file", help="Extra target TOML file(s) (repeatable)."),
]
TrustModel = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Your package.module:factory, trusted when a pytorch-fp32 checkpoint names it "
        "(edgekit never imports code named only by a file).",
    ),
]


ShowAll = Annotated[
    bool, typer.Option("--all", help="Also show the unavailable rows in the table.")
]
Wide = Annotated[
    bool,
    typer.Option(
        "--wide",
        help="All columns: also p99, zip MB (the artifact deflated), size ratio, best img/s, "
        "CV and peak RSS.",
    ),
]
AccuracyImages = Annotated[
    int | None,
    typer.Option(
        "--accuracy-images",
        help="Score top-1 on the first N test images only (a quick look; the report says so).",
    ),
]
Rounds = Annotated[
    int | None,
    typer.Option(
        "--rounds",
        help="Interleaved latency rounds (default 5, 3 with --quick): every target measures "
        "its share of the rules in each round, in rotating order.",
    ),
]
RunLabel = Annotated[
    str | None,
    typer.Option("--label", help="Name of this run in merged reports (default: host and date)."),
]


def _trust(model: str | None) -> None:
    """Record the user's own ``--model`` as trusted (children of this process inherit it)."""
    if model:
        from edgekit.models import trust_model

        trust_model(model)


def _exit_status(rows: list[dict], unavailable_counts: bool = True) -> int:
    """0 when every row is ok; 1 when a row failed (or, if it counts, is unavailable)."""
    bad = {"failed", "unavailable"} if unavailable_counts else {"failed"}
    hit = [r for r in rows if r.get("status") in bad]
    if len(hit) == 1:  # one: its reason too, so the last line says what to do
        r = hit[0]
        why = one_line(str(r.get("reason") or ""))
        print(f"error: {r.get('target', '?')} {r['status']}: {why}", file=sys.stderr)
        return 1
    if hit:
        what = "failed or unavailable" if unavailable_counts else "failed"
        names = ", ".join(str(r.get("target", "?")) for r in hit)
        print(f"error: {len(hit)} target(s) {what}: {names}", file=sys.stderr)
        return 1
    return 0


def _log(msg: str) -> None:
    from rich.markup import escape

    from edgekit.report import make_console

    make_console(stderr=True).print(f"[dim]{escape(msg)}[/dim]", soft_wrap=True)


def _check_spec_numbers(epochs, seed, num_classes, opset) -> None:
    check_numbers(epochs=epochs, seed=seed, num_classes=num_classes, opset=opset)


def _spec(
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
    device=None,
):
    """The :class:`edgekit.pipeline.ModelSpec` of export/run/sweep, its numbers checked first."""
    from edgekit.api import _model_spec

    _check_spec_numbers(epochs, seed, num_classes, opset)
    return _model_spec(
        model,
        dataset,
        data_dir,
        weights,
        num_classes,
        norm,
        epochs,
        seed,
        device,
        exporter,
        simplify,
        opset,
    )


def _bench_config(
    quick: bool, min_queries: int | None, min_duration: float | None, batch_sizes: str | None
):
    from edgekit.api import bench_config

    return bench_config(quick, min_queries, min_duration, batch_sizes)


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
        "--weights",
        help="Checkpoint (loaded with weights_only=True). Without it the model is trained "
        "from scratch for --epochs (default 10).",
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
    int | None, typer.Option("--epochs", help="Training epochs without --weights (default 10).")
]
ExporterOpt = Annotated[str, typer.Option("--exporter", help="dynamo | torchscript")]
SimplifyOpt = Annotated[bool, typer.Option("--simplify/--no-simplify", help="Run onnxslim.")]
OpsetOpt = Annotated[int, typer.Option("--opset", help="ONNX opset (>= 17).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for training and calibration.")]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="Training/fine-tuning device: auto (CUDA when torch sees a GPU, else CPU) | cpu | cuda | cuda:N. Default: auto.",
    ),
]


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
    device: DeviceOpt = None,
):
    """Export a model to ONNX (WORK/model.onnx), checked against PyTorch on real images."""
    from edgekit import api

    res = api.export(
        model,
        dataset,
        work_dir=work_dir,
        data_dir=data_dir,
        weights=weights,
        num_classes=num_classes,
        normalization=norm,
        epochs=epochs,
        exporter=exporter,
        simplify=simplify,
        opset=opset,
        seed=seed,
        device=device,
        force=force,
        log=_log,
        show_progress=True,
    )
    typer.echo(f"{Path(work_dir) / res.onnx.name}")


@app.command()
def build(
    target: TargetsOpt = None,
    work_dir: WorkDir = Path("edgekit-work"),
    target_file: TargetFiles = None,
    force: BuildForce = False,
    onnx_only: Annotated[
        bool,
        typer.Option(
            "--onnx-only",
            help="TensorRT targets: write only the ONNX TensorRT would parse (Q/DQ INT8 or "
            "FP16) to WORK/onnx-for-tensorrt/TARGET, e.g. to build on a Jetson.",
        ),
    ] = False,
    model: TrustModel = None,
):
    """Build targets from the work directory into WORK/artifacts/TARGET.

    One target: an error exits 2 (bad input or unavailable here). Several: each
    is built, one that fails is reported, and the exit status is 1."""
    from edgekit import api

    _trust(model)
    names = api.target_names(target)
    if not names:
        raise EdgekitError("no target named", "pass --target NAME (see edgekit targets)")
    res = api.build(
        work_dir,
        names,
        target_files=target_file,
        force=force,
        onnx_only=onnx_only,
        errors="raise" if len(names) == 1 else "row",
        log=_log if len(names) > 1 else (lambda _msg: None),
    )
    for a in res.artifacts:
        if a.status != "ok":
            continue
        if onnx_only:
            typer.echo(a.path)
        else:
            typer.echo(f"{Path(work_dir) / 'artifacts' / a.target}  ({a.size_mb:.3f} MB)")
    if _exit_status(res.to_records()):
        raise typer.Exit(1)


@app.command()
def bench(
    target: TargetsOpt = None,
    artifact: Annotated[
        list[Path] | None,
        typer.Option("--artifact", "-a", help="Artifact directory (with manifest.json)."),
    ] = None,
    work_dir: WorkDir = Path("edgekit-work"),
    target_file: TargetFiles = None,
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
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="JSON report path (an existing file needs --force)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing --output file.")
    ] = False,
    isolate: Annotated[
        bool,
        typer.Option(
            "--isolate/--in-process",
            help="Measure each artifact in a fresh process (own peak memory, crash-safe).",
        ),
    ] = True,
    model: TrustModel = None,
    accuracy_images: AccuracyImages = None,
    rounds: Rounds = None,
    show_all: ShowAll = False,
    wide: Wide = False,
    label: RunLabel = None,
):
    """Benchmark artifacts: latency percentiles, throughput, size and top-1/top-5.

    Each artifact is measured in a fresh process; one that fails is a row with the
    reason. The batch-1 latency of all artifacts runs in interleaved rounds, and a row
    is marked noisy when its spread says the machine was busy. Exit status: 0 when
    every row is ok; 1 when one failed or is unavailable; 2 for bad input."""
    _trust(model)
    from edgekit import api
    from edgekit.fileio import check_writable
    from edgekit.report import print_table

    if output is not None:  # before minutes of measuring, not after
        check_writable(output, force)
        if output.is_dir():
            raise EdgekitError(f"--output {output} is a directory", "give a file name")
    cfg = _bench_config(quick, min_queries, min_duration, batch_sizes)
    names = api.target_names(target)
    res = api.benchmark(
        work_dir,
        names,
        artifacts=artifact,
        target_files=target_file,
        dataset=dataset,
        data_dir=data_dir,
        threads=threads,
        accuracy=not no_accuracy,
        baseline=baseline,
        isolate=isolate,
        config=cfg,
        accuracy_images=accuracy_images,
        rounds=rounds,
        label=label,
        log=_log,
    )
    rows = res.rows
    print_table(rows, wide=wide, show_all=show_all)
    out = output or (Path(work_dir) / "bench.json" if names else None)
    if out:  # the table is printed already: a write that fails loses no measurement
        res.save(out, force=force or not output)
        _log(f"wrote {out}")
    if _exit_status(rows):
        raise typer.Exit(1)


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
    targets: AllTargets = None,
    target_file: TargetFiles = None,
    threads: Threads = None,
    quick: Quick = False,
    exporter: ExporterOpt = "dynamo",
    simplify: SimplifyOpt = True,
    opset: OpsetOpt = 18,
    seed: SeedOpt = 0,
    force: Force = False,
    prune_ratio: Annotated[
        float | None,
        typer.Option("--prune-ratio", help="Prune (uniform L2, round_to 8) and fine-tune first."),
    ] = None,
    compress: Annotated[
        str | None,
        typer.Option(
            "--compress",
            help="TECHNIQUE:LEVEL, compress and fine-tune first, e.g. lowrank:0.5 (SVD, "
            "-50% MACs) or channel:0.5 (channel pruning to -50% MACs).",
        ),
    ] = None,
    finetune_epochs: Annotated[
        int | None,
        typer.Option(
            "--finetune-epochs",
            help="With --prune-ratio/--compress (default 2, or none with --finetune-minutes).",
        ),
    ] = None,
    finetune_minutes: FinetuneMinutes = None,
    device: DeviceOpt = None,
    accuracy_images: AccuracyImages = None,
    rounds: Rounds = None,
    show_all: ShowAll = False,
    wide: Wide = False,
    label: RunLabel = None,
):
    """The whole pipeline: data, model (trained briefly without --weights), ONNX, every
    target available here, and the benchmark. With no arguments: digits + ResNet-8.

    Exit status: 0 when every asked target is ok; 1 when one failed or (with
    --targets) is unavailable here; 2 for bad input. Without --targets, targets
    unavailable on this machine (e.g. TensorRT) are rows, not failures."""
    from edgekit import api
    from edgekit.report import print_table

    _check_spec_numbers(epochs, seed, num_classes, opset)
    names = api.target_names(targets)
    if finetune_epochs is not None or finetune_minutes is not None:
        from edgekit.prune import finetune_config

        finetune_config(None, finetune_epochs, finetune_minutes)  # fail before any work
    prune_options = {}
    if finetune_epochs is not None:
        prune_options["finetune_epochs"] = finetune_epochs
    if finetune_minutes:
        prune_options["finetune_minutes"] = finetune_minutes
    technique = "channel"
    if compress is not None:
        if prune_ratio is not None:
            raise EdgekitError(
                "--compress and --prune-ratio both ask for a compression",
                "keep one: --prune-ratio R is a channel ratio, --compress channel:M a MACs cut",
            )
        technique, prune_ratio = parse_compress(compress)
        if technique == "channel":
            prune_options["by"] = "macs"  # the channel technique's level is a MACs cut
    res = api.run(
        model,
        dataset,
        work_dir=work_dir,
        targets=names,
        target_files=target_file,
        data_dir=data_dir,
        weights=weights,
        num_classes=num_classes,
        normalization=norm,
        epochs=epochs,
        exporter=exporter,
        simplify=simplify,
        opset=opset,
        seed=seed,
        device=device,
        threads=threads,
        quick=quick,
        accuracy_images=accuracy_images,
        rounds=rounds,
        label=label,
        prune_ratio=prune_ratio,
        prune_options=prune_options,
        technique=technique,
        force=force,
        log=_log,
        show_progress=True,
    )
    rows = res.rows
    print_table(
        rows,
        title=f"edgekit run: {model or 'default model'} on {dataset}",
        wide=wide,
        show_all=show_all,
    )
    _log(f"wrote {Path(work_dir) / 'report'}.json/.csv/.md and the PNG plots in {work_dir}")
    if _exit_status(rows, unavailable_counts=bool(names)):
        raise typer.Exit(1)


@app.command("targets")
def targets_cmd(target_file: TargetFiles = None):
    """List every target and whether it can be built and run on this machine."""
    from rich.markup import escape
    from rich.table import Table

    from edgekit.report import make_console
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
            escape(reason or tg.description),
        )
    make_console().print(t)


@app.command()
def infer(
    artifact: Annotated[
        Path,
        typer.Option(
            "--artifact", "-a", metavar="DIR", help="Artifact directory (with manifest.json)."
        ),
    ],
    input: Annotated[
        list[Path],
        typer.Option(
            "--input",
            "-i",
            metavar="FILE",
            help="Image (PNG/JPEG/...) or .npz batch (x uint8 [N,H,W,3], optional y); repeatable.",
        ),
    ],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes shown per image.")] = 5,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    resize: Annotated[
        bool,
        typer.Option(
            "--resize/--no-resize", help="Resize images of another size (with a note) or reject."
        ),
    ] = True,
    threads: Threads = None,
    model: TrustModel = None,
):
    """Top-k classes with probabilities (softmax) of images, using the artifact's preprocessing."""
    _trust(model)
    import json

    from edgekit.harness import check_threads
    from edgekit.infer import infer as do_infer

    for w in check_threads(threads):
        _log(f"warning: {w}")
    at_least("--top-k", top_k, 1)
    res = do_infer(artifact, input, top_k=top_k, threads=threads, resize=resize)
    for note in res["notes"]:
        _log(f"note: {note}")
    if json_out:
        typer.echo(json.dumps(res, indent=2))
        return
    for p in res["predictions"]:
        label = f" (label {p['label_name'] or p['label']})" if p["label"] is not None else ""
        top = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in p["top"])
        typer.echo(f"{p['input']}{label}: {top}")
    if res["top1"] is not None:
        typer.echo(f"top-1: {res['top1']:.2f}% of {res['labelled']} labelled images")


#: import name -> what to install, for commands run without the package they need.
_INSTALL_HINTS = {
    **dict.fromkeys(
        (
            "torch",
            "torchvision",
            "onnx",
            "onnxscript",
            "onnxslim",
            "torch_pruning",
            "sklearn",
            "matplotlib",
        ),
        "pip install 'edgekit-toolchain[build]' (the build host)",
    ),
    "onnxruntime": "pip install 'edgekit-toolchain[runtime]'",
    "PIL": "pip install 'edgekit-toolchain[runtime]'",
    "tensorrt": "TensorRT comes with the JetPack image or NVIDIA's index (docs/device.md)",
}


RecipeOpt = Annotated[
    str | None,
    typer.Option(
        "--recipe",
        help="default (SGD lr 0.1, batch 128, 30 epochs) or cifar-fast (Nesterov, no decay on "
        "BN/bias, batch 256, lr 0.2 with 2-epoch warm-up + cosine, 150 epochs). "
        "Explicit options override it.",
    ),
]


@app.command("train")
def train_cmd(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint directory.")] = Path(
        "edgekit-train"
    ),
    dataset: DatasetOpt = "digits",
    data_dir: DataDirOpt = None,
    model: ModelOpt = "resnet20",
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights",
            help="Start from this checkpoint (loaded with weights_only=True) instead of a "
            "random initialisation.",
        ),
    ] = None,
    recipe: RecipeOpt = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            help="Total epochs (default: the recipe's). With --resume too: --epochs 40 after "
            "30 trains 10 more, and the cosine lr continues downward from where it stood.",
        ),
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")] = None,
    momentum: Annotated[float | None, typer.Option("--momentum")] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay")] = None,
    label_smoothing: Annotated[float | None, typer.Option("--label-smoothing")] = None,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Held out of the training set.")
    ] = 0.1,
    device: DeviceOpt = None,
    compile_: Annotated[
        bool, typer.Option("--compile", help="torch.compile the model (faster steps on GPU).")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers", help="Ignored: batches are indexed on the device (kept for old scripts)."
        ),
    ] = 4,
    teacher: Annotated[
        Path | None, typer.Option("--teacher", help="Distil from this checkpoint.")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue from OUT/last.pt up to --epochs in total (not more)."
        ),
    ] = False,
    seed: SeedOpt = 0,
    force: Annotated[
        bool,
        typer.Option("--force", help="Start over when OUT already holds best.pt/last.pt."),
    ] = False,
):
    """Train with a CIFAR recipe; keeps OUT/best.pt (by validation top-1), OUT/last.pt
    and OUT/curves.png. Multi-GPU: torchrun --nproc_per_node=N -m edgekit train ..."""
    from edgekit.train import make_config, train

    at_least("--epochs", epochs, 0)
    at_least("--batch-size", batch_size, 1)
    at_least("--seed", seed, 0)
    if not 0 <= val_fraction < 1:  # NaN too
        raise EdgekitError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgekitError(f"--out {out_dir} is a file", "give a directory for the checkpoints")
    cfg = make_config(
        recipe,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        label_smoothing=label_smoothing,
        seed=seed,
        workers=workers,
        compile=compile_,
    )
    train(
        model,
        dataset,
        out_dir,
        cfg,
        data_dir=str(data_dir) if data_dir else None,
        weights=str(weights) if weights else None,
        val_fraction=val_fraction,
        device=device,
        resume=resume,
        teacher_weights=str(teacher) if teacher else None,
        force=force,
        log=_log,
    )


PruneRatio = Annotated[
    float, typer.Option("--ratio", help="Channel pruning ratio in [0, 1) (MACs with --by macs).")
]


FinetuneMinutes = Annotated[
    float | None,
    typer.Option(
        "--finetune-minutes",
        help="Wall-clock budget of each fine-tuning phase (the cosine lr runs over it).",
    ),
]
KdFeatures = Annotated[
    float,
    typer.Option(
        "--kd-features",
        help="With --distill: weight of block-output (feature) distillation, e.g. 100. "
        "Helps short fine-tunes; see docs/pruning.md. 0 = logits only.",
    ),
]


def parse_compress(text: str) -> tuple[str, float]:
    """``"lowrank:0.5"`` -> ``("lowrank", 0.5)``; the name is checked against the registry.

    Raises:
        EdgekitError: not ``NAME:LEVEL`` with a number, or an unknown technique.
    """
    from edgekit.compress import get_technique

    name, colon, level = text.partition(":")
    try:
        if not colon:
            raise ValueError
        value = float(level)
    except ValueError:
        raise EdgekitError(
            f"--compress wants TECHNIQUE:LEVEL, got {text!r}", "e.g. --compress lowrank:0.5"
        ) from None
    get_technique(name.strip())
    return name.strip(), value


def _prune_config(ratio, layer_ratio, global_, importance, steps, round_to, ignore, by):
    from edgekit.prune import PruneConfig, parse_layer_ratios

    return PruneConfig(
        ratio=ratio,
        per_layer=parse_layer_ratios(layer_ratio) if layer_ratio else {},
        global_pruning=global_,
        importance=importance,
        steps=steps,
        round_to=round_to if round_to > 1 else None,
        ignore=[s.strip() for s in ignore.split(",") if s.strip()] if ignore else [],
        by=by,
    )


@app.command("prune")
def prune_cmd(
    weights: Annotated[Path, typer.Option("--weights", help="Checkpoint to prune.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output directory, as for train: OUT/model.pt is the pruned checkpoint. "
            "A FILE.pt (the old form) still works, with a warning.",
        ),
    ],
    dataset: DatasetOpt = "digits",
    data_dir: DataDirOpt = None,
    model: ModelOpt = None,
    ratio: PruneRatio = 0.5,
    layer_ratio: Annotated[
        str | None, typer.Option("--layer-ratio", help="Per layer: NAME=R[,NAME=R].")
    ] = None,
    global_: Annotated[
        bool, typer.Option("--global/--uniform", help="Rank channels across layers.")
    ] = False,
    importance: Annotated[str, typer.Option("--importance", help="l1, l2, bn, taylor.")] = "l2",
    steps: Annotated[int, typer.Option("--steps", help="Iterative pruning steps.")] = 1,
    round_to: Annotated[int, typer.Option("--round-to")] = 8,
    ignore: Annotated[str | None, typer.Option("--ignore", help="Layers not pruned.")] = None,
    by: Annotated[str, typer.Option("--by", help="channels or macs.")] = "channels",
    finetune_epochs: Annotated[
        int | None,
        typer.Option(
            "--finetune-epochs",
            help="Between steps and after the last (default 0, or none with --finetune-minutes).",
        ),
    ] = None,
    finetune_minutes: FinetuneMinutes = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Fine-tuning learning rate (default 0.01).")
    ] = None,
    recipe: RecipeOpt = None,
    distill: Annotated[
        bool, typer.Option("--distill", help="KD from the unpruned model while fine-tuning.")
    ] = False,
    kd_features: KdFeatures = 0.0,
    device: DeviceOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing --out checkpoint file.")
    ] = False,
):
    """Structured pruning (torch-pruning DepGraph): removes channels, reports params/MACs/size."""
    from edgekit.prune import prune_checkpoint

    cfg = _prune_config(ratio, layer_ratio, global_, importance, steps, round_to, ignore, by)
    target = _prune_output(out)
    prune_checkpoint(
        str(weights),
        str(target),
        dataset,
        cfg,
        model=model,
        data_dir=str(data_dir) if data_dir else None,
        finetune_epochs=finetune_epochs if finetune_minutes else (finetune_epochs or 0),
        finetune_minutes=finetune_minutes,
        lr=lr,
        recipe=recipe,
        distill=distill,
        kd_features=kd_features,
        device=device,
        force=force,
        log=_log,
    )
    _log(f"wrote {target}")
    if target == out:
        _log(
            f"warning: -o {out}: prune -o now names a directory, as train -o does "
            "(it writes DIR/model.pt); the old form -o FILE.pt still works and writes that file"
        )


def _prune_output(out: Path) -> Path:
    """The checkpoint ``prune -o OUT`` writes: ``OUT/model.pt`` (OUT a directory, as for
    ``train -o``), or OUT itself for the old form ``-o FILE.pt``/``.pth`` (the command warns
    after writing it, so that an error stays the only line)."""
    if out.suffix in (".pt", ".pth") and not out.is_dir():
        return out  # the old form: warned about once the file is written
    if out.exists() and not out.is_dir():
        raise EdgekitError(f"-o {out} is a file", "give a directory (OUT/model.pt is written)")
    return out / "model.pt"


CompressOut = Annotated[
    Path,
    typer.Option(
        "--out", "-o", help="Output directory (OUT/model.pt is written), or a FILE.pt to write."
    ),
]
FinetuneEpochs = Annotated[
    int | None,
    typer.Option(
        "--finetune-epochs",
        help="Fine-tuning epochs with the masks/codebooks fixed (default 0, or none with "
        "--finetune-minutes).",
    ),
]
FinetuneLr = Annotated[
    float | None, typer.Option("--lr", help="Fine-tuning learning rate (default 0.01).")
]
Distill = Annotated[
    bool,
    typer.Option("--distill", help="KD from the uncompressed model while fine-tuning."),
]
LayerList = Annotated[
    str | None,
    typer.Option(
        "--layers", help="Only these Conv2d/Linear layers, comma-separated (default: all)."
    ),
]
IgnoreList = Annotated[
    str | None, typer.Option("--ignore", help="Layers left as they are, comma-separated.")
]
CheckpointForce = Annotated[
    bool, typer.Option("--force", help="Overwrite an existing output checkpoint.")
]


def _names(text: str | None) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()] if text else []


def _compress(
    technique, level, options, weights, out, dataset, data_dir, model, finetune_epochs,
    finetune_minutes, lr, recipe, distill, device, force,
) -> None:  # fmt: skip
    """Run :func:`edgekit.compress.driver.compress_checkpoint` for a command."""
    from edgekit.compress import get_technique

    get_technique(technique).check(level, options)  # before loading data or weights
    if not weights.is_file():
        raise EdgekitError(
            f"--weights {weights} is not a file", "give an edgekit or zoo checkpoint"
        )
    from edgekit.compress.driver import compress_checkpoint

    target = _prune_output(out)
    rec = compress_checkpoint(
        technique,
        level,
        str(weights),
        target,
        dataset,
        options=options,
        model=model,
        data_dir=str(data_dir) if data_dir else None,
        finetune_epochs=finetune_epochs if finetune_minutes else (finetune_epochs or 0),
        finetune_minutes=finetune_minutes,
        lr=lr,
        recipe=recipe,
        distill=distill,
        device=device,
        force=force,
        log=_log,
    )
    _log(compression_summary(rec))
    _log(f"wrote {target}")


def compression_summary(rec: dict) -> str:
    """One line on what a compression record measured (MACs, sparsity or codebook)."""
    if "layers_factorized" in rec:
        b, a = rec["before"], rec["after"]
        return (
            f"MACs {b['macs'] / 1e6:.2f}M -> {a['macs'] / 1e6:.2f}M "
            f"(-{1 - a['macs'] / b['macs']:.1%}), params {b['params']} -> {a['params']}, "
            f"{rec['layers_factorized']} layer(s) factorized"
        )
    s = rec.get("sparsity_reached")
    if s:
        line = (
            f"sparsity reached: {s['sparsity']:.1%} of the Conv2d/Linear weights "
            f"({s.get('sparsity_pruned', s['sparsity']):.1%} of the layers pruned)"
        )
        skipped = [k["layer"] for k in rec.get("skipped") or []]
        return line + (f"; left dense: {', '.join(skipped)}" if skipped else "")
    cb = rec.get("codebook")
    if cb:
        return (
            f"codebook: {cb['bytes'] / 1e3:.1f} kB ({cb['bits']}-bit indices + float32 "
            f"centroids) for {cb['dense_bytes'] / 1e3:.1f} kB of float32 weights; at most "
            f"{rec.get('max_distinct')} distinct values per layer"
        )
    if "dropped" in rec:
        b, a = rec["before"], rec["after"]
        return (
            f"dropped {len(rec['dropped'])} of {len(rec['droppable'])} droppable blocks "
            f"({', '.join(rec['dropped'])}); MACs {b['macs'] / 1e6:.2f}M -> "
            f"{a['macs'] / 1e6:.2f}M (-{1 - a['macs'] / b['macs']:.1%})"
        )
    return f"{rec.get('technique')} done"


@app.command("sparsify")
def sparsify_cmd(
    weights: Annotated[Path, typer.Option("--weights", help="Checkpoint to sparsify.")],
    out: CompressOut,
    sparsity: Annotated[
        float | None,
        typer.Option(
            "--sparsity",
            help="Unstructured: fraction of the Conv2d/Linear weights zeroed, in [0, 1).",
        ),
    ] = None,
    pattern: Annotated[
        str | None,
        typer.Option(
            "--pattern",
            help="2:4: keep the 2 largest of every 4 consecutive input-channel weights "
            "(NVIDIA sparse tensor cores).",
        ),
    ] = None,
    scope: Annotated[
        str,
        typer.Option(
            "--scope", help="Unstructured: global (rank over all layers) or layer (each layer)."
        ),
    ] = "global",
    layers: LayerList = None,
    ignore: IgnoreList = None,
    dataset: DatasetOpt = "digits",
    data_dir: DataDirOpt = None,
    model: ModelOpt = None,
    finetune_epochs: FinetuneEpochs = None,
    finetune_minutes: FinetuneMinutes = None,
    lr: FinetuneLr = None,
    recipe: RecipeOpt = None,
    distill: Distill = False,
    device: DeviceOpt = None,
    force: CheckpointForce = False,
):
    """Weight sparsity by L1 magnitude (--sparsity S) or the 2:4 pattern (--pattern 2:4),
    masks fixed while fine-tuning; reports the sparsity reached. Layer shapes stay: the
    dense backends run it at the dense model's latency (see docs/compression.md)."""
    if (sparsity is None) == (pattern is None):
        raise EdgekitError(
            "give exactly one of --sparsity S and --pattern 2:4", "e.g. --sparsity 0.5"
        )
    if pattern is not None and pattern.strip() != "2:4":
        raise EdgekitError(
            f"--pattern {pattern} is not supported", "only 2:4 (NVIDIA's sparse tensor cores)"
        )
    options: dict = {"layers": _names(layers), "ignore": _names(ignore)}
    if pattern is None:
        options["scope"] = scope
    technique, level = ("unstructured", sparsity) if pattern is None else ("2:4", 0.5)
    _compress(
        technique, level, options, weights, out, dataset, data_dir, model, finetune_epochs,
        finetune_minutes, lr, recipe, distill, device, force,
    )  # fmt: skip


@app.command("cluster")
def cluster_cmd(
    weights: Annotated[Path, typer.Option("--weights", help="Checkpoint to cluster.")],
    out: CompressOut,
    bits: Annotated[
        int,
        typer.Option("--bits", help="Bits per weight index: 2^bits shared values per layer (1-8)."),
    ] = 4,
    layers: LayerList = None,
    ignore: IgnoreList = None,
    dataset: DatasetOpt = "digits",
    data_dir: DataDirOpt = None,
    model: ModelOpt = None,
    finetune_epochs: FinetuneEpochs = None,
    finetune_minutes: FinetuneMinutes = None,
    lr: FinetuneLr = None,
    recipe: RecipeOpt = None,
    distill: Distill = False,
    device: DeviceOpt = None,
    force: CheckpointForce = False,
):
    """Weight clustering by K-means: each layer's weights share 2^bits values, and
    fine-tuning trains the shared values only (Deep Compression, Han et al. 2016).
    Reports the codebook size."""
    options = {"layers": _names(layers), "ignore": _names(ignore)}
    _compress(
        "cluster", bits, options, weights, out, dataset, data_dir, model, finetune_epochs,
        finetune_minutes, lr, recipe, distill, device, force,
    )  # fmt: skip


@app.command("drop-blocks")
def drop_blocks_cmd(
    weights: Annotated[Path, typer.Option("--weights", help="Checkpoint to make shallower.")],
    out: CompressOut,
    level: Annotated[
        float | None,
        typer.Option(
            "--level",
            help="Fraction of each stage's droppable residual blocks to drop, in (0, 1); "
            "the last ones of the stage go.",
        ),
    ] = None,
    blocks: Annotated[
        str | None,
        typer.Option("--blocks", help="Drop these blocks instead, comma-separated (layer2.2,...)."),
    ] = None,
    dataset: DatasetOpt = "digits",
    data_dir: DataDirOpt = None,
    model: ModelOpt = None,
    finetune_epochs: FinetuneEpochs = None,
    finetune_minutes: FinetuneMinutes = None,
    lr: FinetuneLr = None,
    recipe: RecipeOpt = None,
    distill: Distill = False,
    device: DeviceOpt = None,
    force: CheckpointForce = False,
):
    """Depth pruning: replace whole residual blocks (identity shortcut, same shape in and
    out) by the identity, then fine-tune. Removes operators, not just MACs: what pays on
    a small model bound by its operator count (stochastic depth, Huang et al. 2016)."""
    options = {"blocks": _names(blocks)} if blocks else {}
    _compress(
        "depth", level, options, weights, out, dataset, data_dir, model, finetune_epochs,
        finetune_minutes, lr, recipe, distill, device, force,
    )  # fmt: skip


@app.command("factorize")
def factorize_cmd(
    weights: Annotated[Path, typer.Option("--weights", help="Checkpoint to factorize.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Output directory (OUT/model.pt is written) or a FILE.pt."
        ),
    ],
    macs: Annotated[
        float | None,
        typer.Option("--macs", help="Fraction of MACs to remove, in (0, 1), e.g. 0.5."),
    ] = None,
    energy: Annotated[
        float | None,
        typer.Option(
            "--energy",
            help="Instead of --macs: per layer, keep the singular values holding this "
            "fraction of sum(s^2), in (0, 1]; a layer is factorized only if that saves MACs.",
        ),
    ] = None,
    ranks: Annotated[
        str | None,
        typer.Option(
            "--ranks",
            help="Explicit ranks NAME=R[,NAME=R]; alone, or with --macs/--energy for the "
            "other layers.",
        ),
    ] = None,
    include_first: Annotated[
        bool, typer.Option("--include-first", help="Also factorize the first convolution.")
    ] = False,
    round_to: Annotated[
        int,
        typer.Option(
            "--round-to",
            help="Round chosen ranks up to a multiple of this (INT8 CPU kernels want "
            "multiples of 4-8; 1 keeps exact ranks).",
        ),
    ] = 8,
    allocation: Annotated[
        str,
        typer.Option(
            "--allocation",
            help="How --macs is shared among layers: energy (one energy threshold for "
            "all) or zhang (Zhang et al.'s greedy: least energy lost per MAC saved).",
        ),
    ] = "energy",
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="What each factorization keeps: responses (the default: PCA of the "
            "layer's outputs on 256 training images; Zhang et al.) or weights (SVD of the "
            "weights, data-free).",
        ),
    ] = "responses",
    dataset: DatasetOpt = "digits",
    data_dir: DataDirOpt = None,
    model: ModelOpt = None,
    finetune_epochs: Annotated[
        int | None,
        typer.Option("--finetune-epochs", help="Default 0, or none with --finetune-minutes."),
    ] = None,
    finetune_minutes: FinetuneMinutes = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Fine-tuning learning rate (default 0.01).")
    ] = None,
    recipe: RecipeOpt = None,
    distill: Annotated[
        bool, typer.Option("--distill", help="KD from the unfactorized model while fine-tuning.")
    ] = False,
    device: DeviceOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing output checkpoint.")
    ] = False,
):
    """Low-rank factorization (truncated SVD): each k x k conv becomes a rank-r k x k conv
    and a 1x1 conv (Zhang et al. 2015); ranks by --macs (--allocation), --energy or --ranks."""
    from edgekit.compress.lowrank import parse_ranks

    options: dict = {}
    if energy is not None:
        options["energy"] = energy
    if ranks:
        options["ranks"] = parse_ranks(ranks)
    if include_first:
        options["include_first"] = True
    options["round_to"] = round_to
    options["allocation"] = allocation
    options["method"] = method
    _compress(
        "lowrank", macs, options, weights, out, dataset, data_dir, model, finetune_epochs,
        finetune_minutes, lr, recipe, distill, device, force,
    )  # fmt: skip


@app.command("sweep")
def sweep_cmd(
    work_dir: WorkDir = Path("edgekit-sweep"),
    ratios: Annotated[str, typer.Option("--ratios", help="e.g. 0,0.3,0.5,0.7")] = "0,0.3,0.5,0.7",
    technique: Annotated[
        str,
        typer.Option(
            "--technique",
            help="What the ratios are levels of: channel (channel pruning, as --by says), "
            "lowrank (SVD, fraction of MACs removed), ...; a comma list runs each.",
        ),
    ] = "channel",
    dataset: DatasetOpt = "digits",
    data_dir: DataDirOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    epochs: EpochsOpt = None,
    targets: AllTargets = None,
    target_file: TargetFiles = None,
    importance: Annotated[str, typer.Option("--importance")] = "l2",
    round_to: Annotated[int, typer.Option("--round-to")] = 8,
    by: Annotated[str, typer.Option("--by", help="channels or macs.")] = "channels",
    finetune_epochs: Annotated[
        int | None,
        typer.Option("--finetune-epochs", help="Default 2, or none with --finetune-minutes."),
    ] = None,
    finetune_minutes: FinetuneMinutes = None,
    recipe: RecipeOpt = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Fine-tuning learning rate (default 0.01).")
    ] = None,
    distill: Annotated[bool, typer.Option("--distill")] = False,
    kd_features: KdFeatures = 0.0,
    threads: Threads = None,
    quick: Quick = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Redo every ratio, replacing WORK/r*/ and the sweep report."),
    ] = False,
):
    """Prune (or --technique lowrank, ...) at several ratios, fine-tune, lower to targets:
    WORK/sweep.{json,md,png}.

    The report is rewritten after every ratio; running the same command again
    resumes (finished ratios are skipped). A ratio that fails is a row, not an
    abort. Exit status: 0 when every row is ok, 1 when one failed, 2 for bad input."""
    from edgekit.harness import BenchConfig, check_threads
    from edgekit.sweep import sweep

    check_threads(threads)
    try:
        rs = [float(r) for r in ratios.split(",") if r.strip()]
    except ValueError:
        raise EdgekitError(f"--ratios must be numbers like 0,0.3,0.5, got {ratios!r}") from None
    from edgekit.device import resolve_device
    from edgekit.prune import check_kd_features, finetune_config

    check_kd_features(kd_features, distill)
    resolve_device(device)  # a bad --device or fine-tuning budget fails before any work
    finetune_config(recipe, finetune_epochs, finetune_minutes, lr)
    spec = _spec(
        dataset, data_dir, model, weights, None, None, epochs, "dynamo", True, 18, seed, device
    )
    spec.prune_options = {
        "importance": importance,
        "round_to": round_to if round_to > 1 else None,
        "by": by,
        "distill": distill,
        "kd_features": kd_features,
        **({"finetune_epochs": finetune_epochs} if finetune_epochs is not None else {}),
        **({"finetune_minutes": finetune_minutes} if finetune_minutes else {}),
        **({"recipe": recipe} if recipe else {}),
        **({"lr": lr} if lr is not None else {}),
    }
    from edgekit.api import check_target_names, target_names

    names = target_names(targets)
    check_target_names(names, target_file)  # a typo fails before any training
    cfg = BenchConfig.quick() if quick else BenchConfig()
    rows = sweep(
        spec,
        work_dir,
        rs,
        techniques=[t.strip() for t in technique.split(",") if t.strip()],
        targets=names,
        target_files=target_file,
        cfg=cfg,
        threads=threads,
        force=force,
        log=_log,
    )
    print((Path(work_dir) / "sweep.md").read_text())
    _log(f"wrote {Path(work_dir) / 'sweep.png'}")
    if _exit_status(rows, unavailable_counts=bool(names)):
        raise typer.Exit(1)


@app.command("search")
def search_cmd(
    weights: Annotated[
        Path, typer.Option("--weights", help="The trained checkpoint to prune (required).")
    ],
    target: Annotated[
        str, typer.Option("--target", "-t", help="The target measured, e.g. ort-cpu-int8.")
    ],
    work_dir: WorkDir = Path("edgekit-search"),
    budget_ms: Annotated[
        float | None, typer.Option("--budget-ms", help="p50 latency budget in ms (batch 1).")
    ] = None,
    budget_ratio: Annotated[
        float | None,
        typer.Option(
            "--budget-ratio",
            help="Budget as a fraction of the unpruned p50 on the target, measured "
            "interleaved in the same run (e.g. 0.8).",
        ),
    ] = None,
    trials: Annotated[
        int, typer.Option("--trials", help="Distinct trials (repeats are not re-run).")
    ] = 12,
    finetune_epochs: Annotated[
        int, typer.Option("--finetune-epochs", help="KD fine-tuning epochs per trial.")
    ] = 1,
    train_subset: Annotated[
        int, typer.Option("--train-subset", help="Training images each trial fine-tunes on.")
    ] = 5000,
    val_images: Annotated[
        int,
        typer.Option("--val-images", help="Held-out training images that score each trial."),
    ] = 2000,
    dataset: DatasetOpt = "digits",
    data_dir: DataDirOpt = None,
    model: ModelOpt = None,
    target_file: TargetFiles = None,
    importance: Annotated[str, typer.Option("--importance")] = "l2",
    round_to: Annotated[int, typer.Option("--round-to")] = 8,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Fine-tuning learning rate (default 0.01).")
    ] = None,
    distill: Annotated[
        bool, typer.Option("--distill/--no-distill", help="KD from the unpruned model.")
    ] = True,
    rounds: Annotated[
        int, typer.Option("--rounds", help="Interleaved latency rounds per trial.")
    ] = 5,
    threads: Annotated[int, typer.Option("--threads", help="Runtime threads while measuring.")] = 1,
    exporter: ExporterOpt = "dynamo",
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Start over, replacing a search in WORK.")
    ] = False,
    depth: Annotated[
        bool,
        typer.Option(
            "--depth",
            help="Also search how many residual blocks each stage drops (edgekit drop-blocks): "
            "removes operators, what pays on a model bound by its operator count.",
        ),
    ] = False,
):
    """Search per-stage pruning ratios for the best validation top-1 under a p50 budget.

    Each trial prunes, fine-tunes, exports, lowers to --target and measures p50 beside
    the unpruned model (Optuna TPE, seeded; uniform ratios first). Writes
    WORK/search.{json,md,png} and WORK/model.pt (the chosen model). Exit status: 0 when a
    model meets the budget, 1 when none does (the best latency is named), 2 for bad input."""
    from edgekit.search import SearchConfig, search

    cfg = SearchConfig(
        target=target,
        budget_ms=budget_ms,
        budget_ratio=budget_ratio,
        trials=trials,
        finetune_epochs=finetune_epochs,
        train_subset=train_subset,
        val_images=val_images,
        seed=seed,
        distill=distill,
        importance=importance,
        round_to=round_to,
        lr=lr,
        rounds=rounds,
        threads=threads,
        exporter=exporter,
        depth=depth,
    )
    search(
        cfg,
        work_dir,
        dataset=dataset,
        weights=weights,
        model=model,
        data_dir=str(data_dir) if data_dir else None,
        target_files=target_file,
        device=device,
        force=force,
        log=_log,
    )
    print((Path(work_dir) / "search.md").read_text())
    _log(f"wrote {Path(work_dir) / 'search.png'}")


@app.command(cls=_PlainUsage)
def compare(
    a: Annotated[
        Path,
        typer.Argument(
            metavar="REFERENCE",
            help="First artifact directory (the reference), or an ONNX file / --onnx-only "
            "output directory without a manifest.",
        ),
    ],
    b: Annotated[
        Path,
        typer.Argument(metavar="CANDIDATE", help="Second artifact directory (or ONNX, as A)."),
    ],
    dataset: Annotated[
        str | None, typer.Option("--dataset", "-d", help="Test data (default: from the work dir).")
    ] = None,
    data_dir: DataDirOpt = None,
    work_dir: WorkDir = Path("edgekit-work"),
    images: Annotated[int, typer.Option("--images", help="Test images to compare on.")] = 1000,
    threads: Threads = None,
    atol: Annotated[
        float | None,
        typer.Option("--atol", help="Absolute logit tolerance (default: logits not checked)."),
    ] = None,
    rtol: Annotated[
        float | None,
        typer.Option("--rtol", help="Relative logit tolerance (default: logits not checked)."),
    ] = None,
    check_error_stat: Annotated[
        str,
        typer.Option(
            "--check-error-stat",
            help="elemwise (every logit within atol + rtol*|A|) | max | mean | median "
            "(that statistic within atol or rtol), as in Polygraphy.",
        ),
    ] = "elemwise",
    min_agreement: Annotated[
        float,
        typer.Option("--min-agreement", help="Least fraction of images with the same top-1."),
    ] = 0.98,
    min_cosine: Annotated[
        float,
        typer.Option("--min-cosine", help="Least cosine similarity of any image's logits."),
    ] = 0.6,
):
    """Run two artifacts on the same real test images: top-1 agreement, max/mean |logit
    difference|, cosine similarity (after Polygraphy's comparator).

    Exit status: 0 when within the tolerances; 1 when beyond them; 2 for bad input."""
    from edgekit import api
    from edgekit.compare import format_comparison

    res = api.compare(
        a,
        b,
        dataset=dataset,
        data_dir=data_dir,
        work_dir=work_dir,
        images=images,
        threads=threads,
        atol=atol,
        rtol=rtol,
        check_error_stat=check_error_stat,
        min_agreement=min_agreement,
        min_cosine=min_cosine,
    ).raw
    typer.echo(format_comparison(res))
    if res["failures"]:
        raise typer.Exit(1)


@app.command(cls=_PlainUsage)
def report(
    results: Annotated[
        list[Path], typer.Argument(help="Result JSON file(s) of edgekit bench/run, merged.")
    ],
    output_dir: Annotated[
        Path, typer.Option("--output-dir", "-o", help="Where the report files go.")
    ] = Path("edgekit-report"),
    confusion: Annotated[
        bool, typer.Option("--confusion", help="Also a confusion-matrix PNG per target.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite report files in --output-dir.")
    ] = False,
    show_all: ShowAll = False,
    wide: Wide = False,
):
    """Table, JSON, CSV, Markdown and PNG plots from one or more result files
    (several runs or devices are merged, each row labelled with its run).

    Exit status: 0 when no row failed and at least one is ok; 1 when a row failed or
    none is ok (only unavailable rows); 2 for bad input (existing files need --force)."""
    from edgekit.report import make_report, print_table

    merged, written = make_report(results, output_dir, confusion=confusion, force=force)
    print_table(merged["rows"], title="edgekit report", wide=wide, show_all=show_all)
    for p in written:
        _log(f"wrote {p}")
    rows = merged["rows"]
    # the rows came from runs: an unavailable one was reported as such there, and only
    # counts here when nothing at all is ok (e.g. a report whose only row is unavailable)
    if _exit_status(rows, unavailable_counts=not any(r.get("status") == "ok" for r in rows)):
        raise typer.Exit(1)


@app.command()
def doctor(
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON (for machines).")
    ] = False,
    require_gpu: Annotated[
        bool,
        typer.Option(
            "--require-gpu",
            help="Exit with status 1 when no CUDA GPU is found, or when a problem is found "
            "(GPU packages for different CUDA majors, TensorRT bindings for another Python).",
        ),
    ] = False,
    target_file: TargetFiles = None,
    artifacts: Annotated[
        list[Path] | None,
        typer.Option(
            "--artifacts",
            help="Work or artifact directory: list its INT8 artifacts and whether each is "
            "safe on this CPU (an artifact built for VNNI can lose top-1 on AVX2).",
        ),
    ] = None,
):
    """What this machine can do: CPU ISA, GPU and its fast precisions, runtime versions,
    and which targets can run here (and why not)."""
    from edgekit.doctor import doctor as do_doctor
    from edgekit.doctor import print_report

    rep = do_doctor(target_file, artifacts)
    if json_out:
        import json

        typer.echo(json.dumps(rep, indent=2))
    else:
        print_report(rep)
    if require_gpu and not rep["gpu"]["available"]:
        print(f"error: --require-gpu: {rep['gpu']['reason']}", file=sys.stderr)
        raise typer.Exit(1)
    if require_gpu and rep["problems"]:
        for p in rep["problems"]:
            print(f"error: --require-gpu: {p['problem']} -- {p['fix']}", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
def sensitivity(
    target: Annotated[
        str, typer.Option("--target", "-t", help="An INT8 target, e.g. ort-cpu-int8.")
    ] = "ort-cpu-int8",
    work_dir: WorkDir = Path("edgekit-work"),
    target_file: TargetFiles = None,
    images: Annotated[
        int,
        typer.Option("--images", help="Validation images (training split, not calibration)."),
    ] = 1000,
    top: Annotated[int, typer.Option("--top", help="Rows of the table printed.")] = 20,
):
    """Per-node INT8 sensitivity: the top-1 gained on a validation slice of the training
    split when each node (dependency group) alone stays FP32, and its output SQNR vs FP32
    on calibration images. Writes WORK/sensitivity-TARGET.json and .png."""
    from edgekit.pipeline import Workspace, build_context
    from edgekit.sensitivity import check_sensitivity_target, format_table, run_sensitivity
    from edgekit.targets import get_target

    at_least("--images", images, 10)
    at_least("--top", top, 1)
    t = get_target(target, target_file)
    check_sensitivity_target(t)  # not quantized: say so before any work
    ws = Workspace(work_dir)
    ws.record()
    ws.check_onnx()
    rep, j, p = run_sensitivity(build_context(ws), work_dir, t, images, _log)
    typer.echo(format_table(rep, top))
    _log(f"wrote {j}")
    _log(f"wrote {p}")


@app.command()
def qat(
    work_dir: WorkDir = Path("edgekit-work"),
    epochs: Annotated[
        float, typer.Option("--epochs", help="Fine-tuning epochs (fractions allowed).")
    ] = 2.0,
    steps: Annotated[
        int | None, typer.Option("--steps", help="At most this many optimizer steps.")
    ] = None,
    lr: Annotated[
        float, typer.Option("--lr", help="Peak learning rate (SGD, cosine decay to 0).")
    ] = 1e-4,
    batch: Annotated[int, typer.Option("--batch", help="Training batch size.")] = 128,
    reduce_range: Annotated[
        bool,
        typer.Option(
            "--reduce-range/--full-range",
            help="7-bit weights, safe on every x86 CPU (default), or full 8-bit weights, "
            "which need VNNI (AVX-512 VNNI or AVX-VNNI) to keep their top-1.",
        ),
    ] = True,
    distill: Annotated[
        float,
        typer.Option(
            "--distill",
            help="Weight alpha in [0, 1] of logits distillation from the FP32 model "
            "(0: labels only).",
        ),
    ] = 0.0,
    temperature: Annotated[
        float, typer.Option("--temperature", help="Distillation temperature.")
    ] = 4.0,
    activation_ranges: Annotated[
        str,
        typer.Option(
            "--activation-ranges",
            help="calibrated: start from ort-cpu-int8's PTQ scales (MinMax on the calibration "
            "images) and keep them fixed while the weights train (default); moving: "
            "moving-average observers updated on the training batches.",
        ),
    ] = "calibrated",
    device: DeviceOpt = None,
    force: Force = False,
    model: TrustModel = None,
):
    """Quantization-aware training of the work directory's model (FX fake quantization:
    per-channel symmetric INT8 weights, 7-bit by default like ort-cpu-int8, per-tensor
    UINT8 activations), exported as a Q/DQ ONNX into WORK/artifacts/ort-cpu-int8-qat."""
    from edgekit.pipeline import Workspace, build_context, load_workspace_dataset
    from edgekit.qat import QatConfig, run_qat

    _trust(model)
    cfg = QatConfig(
        epochs=epochs,
        steps=steps,
        lr=lr,
        batch=batch,
        device=device,
        reduce_range=reduce_range,
        distill=distill,
        temperature=temperature,
        activation_ranges=activation_ranges,
    )
    cfg.check()
    ws = Workspace(work_dir)
    ds = load_workspace_dataset(ws.record())
    m = run_qat(ws, build_context(ws, ds), ds.test, cfg, force=force, log=_log)
    q = m["quantization"]["qat"]
    typer.echo(
        f"{ws.artifact_dir(m['target'])}  fake-quant top-1 {q['torch_top1']:.2f}%, "
        f"ONNX Runtime top-1 {q['ort_top1']:.2f}% ({q['test_images']} test images)"
    )


def one_line(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``), so an error about a
    path holding a newline or a terminal escape stays one line and prints nothing raw."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def main() -> None:
    """Console-script entry point: maps user errors to one line and exit status 2."""
    try:
        app()
    except EdgekitError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))  # 1: a failed build (accuracy limit not met)
    except ModuleNotFoundError as e:  # a build-host command run with the runtime install
        root = (e.name or "").split(".")[0]
        if root not in _INSTALL_HINTS:
            raise
        print(
            f"error: this command needs {root}, which is not installed -- {_INSTALL_HINTS[root]}",
            file=sys.stderr,
        )
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:  # a disk fault that no write helper caught: still one line
        from edgekit.fileio import FS_FAULTS, PATH_ERRORS, fs_error

        if e.errno not in FS_FAULTS and (e.errno not in PATH_ERRORS or not e.filename):
            raise
        fault = fs_error(e, e.filename or "a file", action="access")
        print(f"error: {one_line(str(fault))}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
