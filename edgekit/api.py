"""The Python API: export, build, benchmark and compare from a script or a notebook.

Every CLI command is a thin layer over a function here, and the same names are
re-exported (lazily) from the package::

    import edgekit

    exp = edgekit.export(my_module, dataset="npz:data/", work_dir="work")  # nn.Module or name
    edgekit.build("work", ["ort-cpu", "ort-cpu-int8"])
    res = edgekit.benchmark("work", ["ort-cpu", "ort-cpu-int8"], quick=True)
    pandas.DataFrame(res.to_records())

Results are plain dataclasses; ``to_records()`` gives a list of flat dicts (one per
row), which ``pandas.DataFrame`` takes as it is. Errors are
:class:`edgekit.errors.EdgekitError` (bad input; the message says how to fix it)
and its subclass :class:`edgekit.errors.UnavailableError` (a backend, package or
device missing here). Importing this module imports no torch, onnx or onnxruntime.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, UnavailableError, at_least, at_most

__all__ = [
    "Artifact",
    "BenchmarkResult",
    "BuildResult",
    "CompareResult",
    "ExportResult",
    "benchmark",
    "build",
    "compare",
    "export",
    "run",
    "target_names",
]

#: Bounds of the benchmark rules: a larger value would run for days or exhaust memory.
MAX_MIN_QUERIES = 10_000_000
MAX_MIN_DURATION_S = 3600.0
MAX_BATCH = 65536


def _quiet(msg: str) -> None:
    """The default ``log`` of the API: progress goes to stderr, one line each."""
    print(msg, file=sys.stderr)


def target_names(targets: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    """Target names from ``-t a -t b``, ``-t a,b`` or ``"a,b"`` (one vocabulary).

    Returns the names in order, without duplicates or blanks; None when none were given.
    """
    if targets is None:
        return None
    items = [targets] if isinstance(targets, str) else list(targets)
    out: list[str] = []
    for item in items:
        for name in str(item).split(","):
            name = name.strip()
            if name and name not in out:
                out.append(name)
    return out or None


def check_target_names(names: list[str] | None, target_files=None) -> list:
    """The :class:`edgekit.targets.Target` of every name, all checked before any work.

    Raises:
        EdgekitError: an unknown name (all of them listed, with the known targets).
    """
    if not names:
        return []
    from edgekit.targets import load_targets

    known = load_targets(target_files)
    bad = [n for n in names if n not in known]
    if bad:
        raise EdgekitError(
            f"unknown target{'s' if len(bad) > 1 else ''} {', '.join(repr(b) for b in bad)}",
            f"known targets: {', '.join(known)}; or pass --target-file FILE",
        )
    return [known[n] for n in names]


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass
class ExportResult:
    """A work directory made by :func:`export`.

    Attributes:
        work_dir: the work directory (absolute).
        onnx: ``WORK/model.onnx``.
        checkpoint: ``WORK/model.pt``, or None for an in-memory module.
        model: the model's name (``in-memory CLASS`` for a module).
        dataset: the dataset, paths made absolute.
        classes: class names.
        export_check: the ONNX-vs-PyTorch check (max |diff|, top-1 agreement, images).
    """

    work_dir: Path
    onnx: Path
    checkpoint: Path | None
    model: str
    dataset: str
    classes: list[str]
    export_check: dict = field(default_factory=dict)

    def to_records(self) -> list[dict]:
        """One flat dict: paths as strings, the export check's figures as columns."""
        rec = {
            "work_dir": str(self.work_dir),
            "onnx": str(self.onnx),
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "model": self.model,
            "dataset": self.dataset,
            "num_classes": len(self.classes),
        }
        for k, v in self.export_check.items():
            if not isinstance(v, (dict, list)):
                rec[f"export_{k}"] = v
        return [rec]


@dataclass
class Artifact:
    """One target built by :func:`build`.

    Attributes:
        target: the target's name.
        status: ``ok``, ``unavailable`` (missing backend/hardware here) or ``failed``.
        path: the artifact directory (``WORK/artifacts/TARGET``), or the ONNX
            directory with ``onnx_only``; None when not built.
        size_mb: the artifact file's size in MB (10^6 bytes), when built.
        reason: why it is not ``ok``.
        manifest: the artifact's manifest (None when not built).
    """

    target: str
    status: str
    path: Path | None = None
    size_mb: float | None = None
    reason: str | None = None
    manifest: dict | None = field(default=None, repr=False)


@dataclass
class BuildResult:
    """The targets :func:`build` was asked for, in order."""

    artifacts: list[Artifact]

    @property
    def ok(self) -> bool:
        """True when every target was built."""
        return all(a.status == "ok" for a in self.artifacts)

    def to_records(self) -> list[dict]:
        """One flat dict per target (``manifest`` left out; it is nested)."""
        out = []
        for a in self.artifacts:
            d = asdict(a)
            d.pop("manifest")
            d["path"] = str(a.path) if a.path else None
            out.append(d)
        return out


@dataclass
class BenchmarkResult:
    """Rows measured by :func:`benchmark` or :func:`run`.

    Attributes:
        rows: one dict per target, as in the JSON report (``latency_ms`` in ms with
            p50/p90/p99, ``throughput_ips`` images/s per batch size, ``top1``/``top5``
            in %, ``size_mb``, ``speedup``/``size_ratio``/``top1_drop`` against
            pytorch-fp32 when it was measured).
        environment: machine, CPU, threads, library versions.
        config: the measurement rules.
        meta: labels and class names of the test split (for confusion matrices).
        report_path: where the JSON report was written, if it was.
    """

    rows: list[dict]
    environment: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict, repr=False)
    report_path: Path | None = None

    @property
    def ok(self) -> bool:
        """True when every row is ``ok`` (the CLI then exits 0)."""
        return all(r.get("status") == "ok" for r in self.rows)

    def to_records(self) -> list[dict]:
        """One flat dict per row: the report CSV's columns (latency_p50_ms, ...)."""
        from edgekit.report import _batch_sizes, flat_row

        sizes = _batch_sizes(self.rows)
        return [flat_row(r, sizes) for r in self.rows]

    def save(self, path: str | Path, force: bool = False) -> Path:
        """Write the JSON report (what ``edgekit report`` reads) to ``path``.

        Raises:
            EdgekitError: ``path`` exists and ``force`` is False, or a file-system fault.
        """
        from edgekit.report import write_report

        self.report_path = write_report(
            path, self.rows, self.environment, self.config, meta=self.meta, force=force
        )
        return self.report_path


@dataclass
class CompareResult:
    """Two artifacts run on the same test images (:func:`compare`).

    ``top1_agreement`` is a fraction; ``max_abs_diff``/``mean_abs_diff`` are over
    the logits; the cosine similarity is per image, of the logit vectors.
    """

    a_target: str
    b_target: str
    images: int
    top1_agreement: float
    max_abs_diff: float
    mean_abs_diff: float
    cosine_min: float
    cosine_mean: float
    a_top1: float
    b_top1: float
    failures: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        """True when within the tolerances (``failures`` is empty)."""
        return not self.failures

    def to_records(self) -> list[dict]:
        """One flat dict (``raw`` left out; ``failures`` joined by "; ")."""
        d = asdict(self)
        d.pop("raw")
        d["failures"] = "; ".join(self.failures)
        return [d]


# ---------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------


def export(
    model: Any = None,
    dataset: str = "digits",
    *,
    work_dir: str | Path = "edgekit-work",
    data_dir: str | Path | None = None,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    normalization: str | None = None,
    epochs: int | None = None,
    exporter: str = "dynamo",
    simplify: bool = True,
    opset: int = 18,
    seed: int = 0,
    device: str | None = None,
    force: bool = False,
    log=_quiet,
    show_progress: bool = False,
) -> ExportResult:
    """Make a work directory: data, model, ``model.onnx`` checked against PyTorch.

    Args:
        model: a ``torch.nn.Module`` (exported as it is, in eval mode, on CPU; it is
            copied, never changed), a zoo name (``resnet20``), ``package.module:factory``,
            or None (the default model, ``resnet8``).
        dataset: ``digits``, ``cifar10``, ``cifar100``, ``npz:PATH`` or ``imagefolder:PATH``;
            its test split checks the export, its train split calibrates INT8 targets.
        weights: a checkpoint for a named model (``weights_only=True``); without it a
            named model is trained for ``epochs`` (default 10).
        normalization: ``cifar10`` | ``cifar100`` | ``imagenet`` | ``half`` | ``"m,m,m/s,s,s"``.
        force: replace a work directory that already holds artifacts.
        log: ``callable(str)`` for progress lines (default: stderr).

    An in-memory module leaves no ``model.pt``: no factory could rebuild it in the
    benchmark's own process, so the pytorch-fp32 baseline and torchscript-int8 are
    unavailable for it (speedup and drop then stay empty).

    Raises:
        EdgekitError: bad dataset, model, weights or numbers, an existing work
            directory without ``force``, or a failed export check.
    """
    from edgekit.pipeline import prepare

    spec = _model_spec(
        model,
        dataset,
        data_dir,
        weights,
        num_classes,
        normalization,
        epochs,
        seed,
        device,
        exporter,
        simplify,
        opset,
    )
    check_numbers(epochs=epochs, seed=seed, num_classes=num_classes, opset=opset)
    ws = prepare(spec, Path(work_dir), force=force, log=log, show_progress=show_progress)
    rec = ws.record()
    return ExportResult(
        work_dir=ws.root.absolute(),
        onnx=ws.onnx.absolute(),
        checkpoint=ws.checkpoint.absolute() if ws.checkpoint.is_file() else None,
        model=rec["model"],
        dataset=rec["dataset"],
        classes=list(rec["classes"]),
        export_check=dict(rec.get("export_check") or {}),
    )


def check_numbers(epochs=None, seed=None, num_classes=None, opset=None) -> None:
    """Refuse out-of-range ``--epochs``, ``--seed``, ``--num-classes`` and ``--opset``
    before any work (``None``: not given).

    Raises:
        EdgekitError: a number out of its range, naming the option.
    """
    at_least("--epochs", epochs, 0)
    at_least("--seed", seed, 0)
    at_least("--num-classes", num_classes, 1)
    at_most("--num-classes", num_classes, 100_000)
    at_most("--seed", seed, 2**32 - 1)
    at_least("--opset", opset, 1)


def _model_spec(
    model,
    dataset,
    data_dir,
    weights,
    num_classes,
    norm,
    epochs,
    seed,
    device,
    exporter: str = "dynamo",
    simplify: bool = True,
    opset: int = 18,
):
    """The :class:`edgekit.pipeline.ModelSpec` of export/run/sweep/prune (a named model
    or an in-memory ``nn.Module``)."""
    from edgekit.pipeline import ModelSpec

    named = model is None or isinstance(model, str)
    return ModelSpec(
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        model=model if named else None,
        module=None if named else model,
        weights=str(weights) if weights else None,
        num_classes=num_classes,
        normalization=norm,
        epochs=epochs,
        exporter=exporter,
        simplify=simplify,
        opset=opset,
        seed=seed,
        device=device,
    )


# ---------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------


def build(
    work_dir: str | Path = "edgekit-work",
    targets: str | list[str] | None = None,
    *,
    target_files: list[str | Path] | None = None,
    force: bool = False,
    onnx_only: bool = False,
    errors: str = "row",
    log=_quiet,
) -> BuildResult:
    """Build targets of a work directory into ``WORK/artifacts/TARGET``.

    Args:
        targets: names (a list, or ``"a,b"``); None: every target available here.
        target_files: extra target TOML files.
        force: replace existing artifacts.
        onnx_only: TensorRT targets: write only the ONNX TensorRT would parse.
        errors: ``"row"``: a target that is unavailable or fails becomes an
            :class:`Artifact` with that status and the reason; ``"raise"``: raise it.

    Raises:
        EdgekitError: not a work directory or an unknown target name (checked for
            all names before anything is built); with ``errors="raise"``, the first
            failure (:class:`UnavailableError` for a missing backend or device).
    """
    from edgekit.pipeline import Workspace
    from edgekit.pipeline import build as build_one
    from edgekit.targets import load_targets, unavailable_reason

    if errors not in ("row", "raise"):
        raise EdgekitError(f"errors must be 'row' or 'raise', got {errors!r}")
    names = target_names(targets)
    if names:
        chosen = check_target_names(names, target_files)
    else:
        chosen = [t for t in load_targets(target_files).values() if not unavailable_reason(t)]
    ws = Workspace(Path(work_dir))
    ws.record()  # not a work directory: say so before building anything
    for t in chosen:
        ws.artifact_dir(t.name)  # a name that is not a plain name: refused first
    out = []
    for t in chosen:
        try:
            log(f"{t.name}: building")
            m = build_one(ws, t.name, target_files, force=force, onnx_only=onnx_only)
        except EdgekitError as e:
            if errors == "raise":
                raise
            status = "unavailable" if isinstance(e, UnavailableError) else "failed"
            log(f"{t.name}: {status}: {e}")
            out.append(Artifact(t.name, status, reason=str(e)))
            continue
        if onnx_only:
            out.append(Artifact(t.name, "ok", path=Path(m["path"]), manifest=m))
        else:
            out.append(
                Artifact(
                    t.name,
                    "ok",
                    path=ws.artifact_dir(m["target"]),
                    size_mb=m["size_bytes"] / 1e6,
                    manifest=m,
                )
            )
    return BuildResult(out)


# ---------------------------------------------------------------------------
# benchmark
# ---------------------------------------------------------------------------


def bench_config(
    quick: bool = False,
    min_queries: int | None = None,
    min_duration: float | None = None,
    batch_sizes: str | list[int] | None = None,
):
    """A :class:`edgekit.harness.BenchConfig` with the user's numbers checked.

    Raises:
        EdgekitError: a number out of range or ``batch_sizes`` that are not integers.
    """
    from edgekit.harness import BenchConfig

    at_least("--min-queries", min_queries, 1)
    at_most("--min-queries", min_queries, MAX_MIN_QUERIES)
    if min_duration is not None and not 0 <= min_duration <= MAX_MIN_DURATION_S:  # NaN too
        raise EdgekitError(
            f"--min-duration must be a number of seconds in [0, {MAX_MIN_DURATION_S}], "
            f"got {min_duration}",
            "e.g. --min-duration 10 (inf or nan would never end, or never measure)",
        )
    cfg = BenchConfig.quick() if quick else BenchConfig()
    if min_queries is not None:
        cfg.min_queries = min_queries
    if min_duration is not None:
        cfg.min_duration_s = min_duration
    if batch_sizes:
        try:
            if isinstance(batch_sizes, str):
                cfg.batch_sizes = tuple(int(b) for b in batch_sizes.split(","))
            else:
                cfg.batch_sizes = tuple(int(b) for b in batch_sizes)
        except ValueError:
            raise EdgekitError(
                f"--batch-sizes must be integers like 1,8,32, got {batch_sizes!r}"
            ) from None
        if not cfg.batch_sizes or min(cfg.batch_sizes) < 1:
            raise EdgekitError(f"--batch-sizes must be at least 1, got {batch_sizes!r}")
        if max(cfg.batch_sizes) > MAX_BATCH:
            raise EdgekitError(
                f"--batch-sizes {max(cfg.batch_sizes)} is above the limit of {MAX_BATCH}",
                "measure throughput at smaller batches, e.g. 1,8,32,128",
            )
        cfg.strict_batch = True
    return cfg


def measure_options(cfg, accuracy_images: int | None = None, rounds: int | None = None):
    """Apply ``accuracy_images`` (score only the first N test images) and ``rounds``
    (interleaved latency rounds) to a :class:`edgekit.harness.BenchConfig`, checked first.

    Raises:
        EdgekitError: ``accuracy_images < 1`` or ``rounds`` outside [1, 1000].
    """
    at_least("--accuracy-images", accuracy_images, 1)
    at_least("--rounds", rounds, 1)
    at_most("--rounds", rounds, 1000)
    if accuracy_images is not None:
        cfg.accuracy_images = accuracy_images
    if rounds is not None:
        cfg.rounds = rounds
    return cfg


def benchmark(
    work_dir: str | Path = "edgekit-work",
    targets: str | list[str] | None = None,
    *,
    artifacts: list[str | Path] | None = None,
    target_files: list[str | Path] | None = None,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    threads: int | None = None,
    quick: bool = False,
    min_queries: int | None = None,
    min_duration: float | None = None,
    batch_sizes: str | list[int] | None = None,
    accuracy: bool = True,
    baseline: bool = True,
    isolate: bool = True,
    output: str | Path | None = None,
    force: bool = False,
    config=None,
    accuracy_images: int | None = None,
    rounds: int | None = None,
    label: str | None = None,
    log=_quiet,
) -> BenchmarkResult:
    """Benchmark artifacts: latency percentiles (ms), throughput (images/s), size, top-1/top-5.

    Args:
        targets: targets built in ``work_dir`` (a list or ``"a,b"``); the
            pytorch-fp32 row is added when built and ``baseline`` is True.
        artifacts: artifact directories (with ``manifest.json``), anywhere.
        target_files: extra target TOML files (to name their targets).
        dataset: test data; default: the work directory's (for ``targets``).
        accuracy: run the accuracy pass over the test split.
        isolate: measure each artifact in a fresh process (its own peak memory).
        output: write the JSON report there (an existing file needs ``force``).
        config: a ready :class:`edgekit.harness.BenchConfig` (then ``quick``,
            ``min_queries``, ``min_duration`` and ``batch_sizes`` are ignored).
        accuracy_images: score only the first N test images (a quick look; the report
            says so).
        rounds: interleaved rounds of the batch-1 latency (default 5).
        label: names this run in merged reports (``meta.run``).

    Every input is checked before the first measurement. An artifact that fails or
    cannot run here is a row with the reason (``status`` failed/unavailable).

    Raises:
        EdgekitError: nothing to benchmark, an unknown or unbuilt target, a tampered
            artifact, test data that does not fit, or an existing ``output``.
    """
    from edgekit.backends import get_backend
    from edgekit.fileio import check_writable
    from edgekit.harness import (
        add_ratios,
        bench_many,
        check_batch_sizes,
        check_threads,
        environment,
        machine_load,
        manifest_batch_range,
        result_row,
        row_summary,
    )
    from edgekit.manifest import read_manifest
    from edgekit.pipeline import Workspace, load_workspace_dataset

    for w in check_threads(threads):
        log(f"warning: {w}")
    if output is not None:  # before minutes of measuring, not after
        output = Path(output)
        check_writable(output, force)
        if output.is_dir():
            raise EdgekitError(f"--output {output} is a directory", "give a file name")
    cfg = config or bench_config(quick, min_queries, min_duration, batch_sizes)
    measure_options(cfg, accuracy_images, rounds)
    cfg.accuracy = accuracy
    dirs: list[Path] = [Path(a) for a in artifacts or []]
    named: dict[Path, str] = {}  # WORK/artifacts/NAME -> NAME, checked against its manifest
    ws = Workspace(Path(work_dir))
    names = target_names(targets)
    if names:
        if baseline and "pytorch-fp32" not in names and ws.artifact_dir("pytorch-fp32").is_dir():
            names.insert(0, "pytorch-fp32")
        # a typo says so (all of them at once), not "not built"
        check_target_names([t for t in names if not ws.artifact_dir(t).is_dir()], target_files)
        for t in names:
            d = ws.artifact_dir(t)
            if not d.is_dir():
                raise EdgekitError(
                    f"target {t} is not built in {work_dir}",
                    f"run: edgekit build --target {t} --work-dir {work_dir}",
                )
            dirs.append(d)
            named[d] = t
    if not dirs:
        raise EdgekitError("nothing to benchmark", "pass --target NAME or --artifact DIR")
    classes = None
    unavailable = {}
    manifests = []
    for d in dirs:  # user mistakes first, before minutes of measuring
        m = read_manifest(d, verify=True)  # a tampered artifact is refused up front
        if d in named and m["target"] != named[d]:
            raise EdgekitError(
                f"{d}/manifest.json names target {m['target']!r}, not {named[d]!r}; its row "
                "would be labelled wrongly",
                f"rebuild it: edgekit build --target {named[d]} --force --work-dir {work_dir}",
            )
        manifests.append(m)
        classes = classes or m.get("classes")
        if cfg.strict_batch:
            check_batch_sizes(m["target"], manifest_batch_range(m), cfg.batch_sizes)
        reason = get_backend(m["backend"]).runtime_unavailable_reason(m)
        if reason:  # an asked row that cannot run here: a row (exit status 1), not an error
            unavailable[d] = result_row(m, status="unavailable", reason=reason)
    if dataset:
        from edgekit.data import load_dataset

        test = load_dataset(dataset, str(data_dir) if data_dir else None).test
    elif names:
        test = load_workspace_dataset(ws.record()).test
    else:
        test = None
        if cfg.accuracy:
            log("no --dataset given: accuracy is skipped, latency uses random images")
    if test is not None:
        from edgekit.harness import check_test_split

        for m in manifests:
            check_test_split(m, test, dataset or str(work_dir))
    for row in unavailable.values():
        log(row_summary(row))
    load = {"start": machine_load()}
    measured = iter(
        bench_many([d for d in dirs if d not in unavailable], test, cfg, threads, isolate, log)
    )
    load["end"] = machine_load()
    rows = [unavailable[d] if d in unavailable else next(measured) for d in dirs]
    add_ratios(rows)
    if named:  # a compressed model's rows say what their latency means (issue 17)
        from edgekit.harness import compression_note

        comp = ws.record().get("compression")
        for d, r in zip(dirs, rows, strict=True):
            note = compression_note(r, comp) if d in named else None
            if note:
                r["note"] = note
    meta: dict = {}
    if test is not None:
        scored = test.y[: cfg.accuracy_images]  # accuracy_images None: all of them
        meta = {"labels": scored.tolist(), "classes": classes}
    if label:
        meta["run"] = label
    res = BenchmarkResult(rows, environment(threads, load), cfg.to_dict(), meta)
    if output is not None:
        res.save(output, force=force)
    return res


# ---------------------------------------------------------------------------
# run and compare
# ---------------------------------------------------------------------------


def run(
    model: Any = None,
    dataset: str = "digits",
    *,
    work_dir: str | Path = "edgekit-work",
    targets: str | list[str] | None = None,
    target_files: list[str | Path] | None = None,
    data_dir: str | Path | None = None,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    normalization: str | None = None,
    epochs: int | None = None,
    exporter: str = "dynamo",
    simplify: bool = True,
    opset: int = 18,
    seed: int = 0,
    device: str | None = None,
    threads: int | None = None,
    quick: bool = False,
    config=None,
    accuracy_images: int | None = None,
    rounds: int | None = None,
    label: str | None = None,
    prune_ratio: float | None = None,
    prune_options: dict | None = None,
    technique: str = "channel",
    compress_options: dict | None = None,
    force: bool = False,
    log=_quiet,
    show_progress: bool = False,
) -> BenchmarkResult:
    """The whole pipeline: :func:`export`, build every target, benchmark every artifact.

    ``model`` and the data options are those of :func:`export`; ``targets`` default
    to every target (those unavailable here become rows with the reason). With
    named targets, pytorch-fp32 (the baseline of speedup and drop) is added. The
    report (``report.json``/``.csv``/``.md`` and plots) is written into ``work_dir``.

    ``technique`` (:mod:`edgekit.compress`) says what ``prune_ratio`` is a level of:
    ``channel`` (the default) prunes channels with ``prune_options`` as ``edgekit prune``
    does (a channel ratio); another technique, e.g. ``lowrank``, compresses at level
    ``prune_ratio`` (for ``lowrank``: the fraction of MACs removed) with
    ``compress_options``, then fine-tunes with the fine-tuning keys of ``prune_options``.

    Raises:
        EdgekitError: bad input, found before anything is written (unknown targets
            and techniques included).
    """
    from edgekit.harness import check_threads
    from edgekit.pipeline import check_compression
    from edgekit.pipeline import run as run_pipeline

    for w in check_threads(threads):
        log(f"warning: {w}")
    check_numbers(epochs=epochs, seed=seed, num_classes=num_classes, opset=opset)
    names = target_names(targets)
    if names and "pytorch-fp32" not in names:
        names.insert(0, "pytorch-fp32")
    check_target_names(names, target_files)  # a typo: exit 2 before any work (issue 15)
    if technique == "channel" and prune_ratio is not None and not 0 <= prune_ratio < 1:  # NaN
        raise EdgekitError(
            f"--prune-ratio must be in [0, 1), got {prune_ratio}", "e.g. --prune-ratio 0.5"
        )
    spec = _model_spec(
        model,
        dataset,
        data_dir,
        weights,
        num_classes,
        normalization,
        epochs,
        seed,
        device,
        exporter,
        simplify,
        opset,
    )
    spec.prune_ratio = prune_ratio
    spec.prune_options = dict(prune_options or {})
    spec.technique = technique
    spec.compress_options = dict(compress_options or {})
    check_compression(spec)
    cfg = measure_options(config or bench_config(quick), accuracy_images, rounds)
    rows = run_pipeline(
        spec,
        Path(work_dir),
        targets=names,
        target_files=target_files,
        cfg=cfg,
        threads=threads,
        force=force,
        log=log,
        show_progress=show_progress,
        label=label,
    )
    report = Path(work_dir) / "report.json"
    from edgekit.harness import environment

    return BenchmarkResult(
        rows, environment(threads), cfg.to_dict(), report_path=report if report.is_file() else None
    )


def compare(
    a: str | Path,
    b: str | Path,
    *,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    work_dir: str | Path | None = "edgekit-work",
    images: int = 1000,
    threads: int | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    check_error_stat: str = "elemwise",
    min_agreement: float = 0.98,
    min_cosine: float = 0.6,
) -> CompareResult:
    """Run two artifacts (``a`` is the reference) on the same real test images.

    Top-1 agreement, max/mean |logit difference| and per-image cosine similarity,
    after Polygraphy's comparator (``CompareFunc.simple``), checked against the
    tolerances of :class:`edgekit.compare.Tolerances` (``failures`` lists what is
    beyond them; the CLI exits 1 then). ``a``/``b`` may be an artifact directory, an
    ONNX file or an ``--onnx-only`` output directory.

    Raises:
        EdgekitError: a tolerance out of range, no test data, different preprocessing
            or classes, or an artifact that cannot be opened here.
    """
    from edgekit.compare import Tolerances, compare_artifacts
    from edgekit.harness import check_threads

    check_threads(threads)
    at_least("--images", images, 1)
    tol = Tolerances(atol, rtol, check_error_stat, min_agreement, min_cosine)
    tol.check()
    r = compare_artifacts(
        a, b, dataset, data_dir, work_dir, images=images, threads=threads, tolerances=tol
    )
    return CompareResult(
        a_target=r["a"]["target"],
        b_target=r["b"]["target"],
        images=r["images"],
        top1_agreement=r["top1_agreement"],
        max_abs_diff=r["max_abs_diff"],
        mean_abs_diff=r["mean_abs_diff"],
        cosine_min=r["cosine_min"],
        cosine_mean=r["cosine_mean"],
        a_top1=r["a"]["top1"],
        b_top1=r["b"]["top1"],
        failures=list(r["failures"]),
        raw=r,
    )
