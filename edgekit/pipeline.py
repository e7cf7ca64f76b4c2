"""The pipeline behind the CLI: workspace -> model -> ONNX -> artifacts -> benchmark.

A work directory holds one model and everything built from it::

    WORK/edgekit.json        what the workspace was made from (dataset, model, preprocessing)
    WORK/model.pt            the FP32 model as an edgekit checkpoint (weights_only-safe)
    WORK/model.onnx          its ONNX export, checked against PyTorch
    WORK/artifacts/TARGET/   one directory per target, each with manifest.json
    WORK/report.json         the last benchmark

Every command of the CLI is a thin wrapper over one function here.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import EdgekitError, UnavailableError
from edgekit.fileio import (
    atomic_path,
    clean_stale_parts,
    contained,
    remove_tree,
    require_file,
    workdir_lock,
    write_json,
)

RECORD = "edgekit.json"
DEFAULT_MODEL = "resnet8"
DEFAULT_EPOCHS = 10


@dataclass
class Workspace:
    root: Path

    @property
    def record_path(self) -> Path:
        return self.root / RECORD

    @property
    def checkpoint(self) -> Path:
        return self.root / "model.pt"

    @property
    def onnx(self) -> Path:
        return self.root / "model.onnx"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def onnx_for_tensorrt(self) -> Path:
        return self.root / "onnx-for-tensorrt"

    def artifact_dir(self, target: str) -> Path:
        """``WORK/artifacts/TARGET``.

        Raises:
            EdgekitError: ``target`` is not a plain name, so the path would not be a
                directory directly inside ``WORK/artifacts`` (``..``, ``/abs``, ``""``),
                or ``WORK/artifacts`` (or the artifact) is a symbolic link leading out
                of the work directory.
        """
        return contained(self.artifacts, target, "target name", component=True, within=self.root)

    def lock(self):
        """The work directory's advisory lock (:func:`edgekit.fileio.workdir_lock`)."""
        return workdir_lock(self.root)

    def clean_stale(self) -> list[Path]:
        """Remove ``.*.part`` leftovers of killed edgekit processes (older than this one)."""
        return clean_stale_parts(self.root, self.artifacts, self.onnx_for_tensorrt)

    def has_artifacts(self) -> bool:
        return any(p.is_file() for p in (self.checkpoint, self.onnx)) or (
            self.artifacts.is_dir() and any(self.artifacts.iterdir())
        )

    def record(self) -> dict:
        """The workspace record.

        Raises:
            EdgekitError: the directory is not an edgekit work directory.
        """
        if not self.record_path.is_file():
            raise EdgekitError(
                f"{self.root} is not an edgekit work directory (no {RECORD})",
                "create one with: edgekit export --work-dir DIR ...",
            )
        hint = "re-create the work directory with: edgekit export --force"
        try:
            rec = json.loads(self.record_path.read_text())
        except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
            raise EdgekitError(f"cannot read {self.record_path}: {e}", hint) from None
        from edgekit.schema import validate

        validate(rec, record_schema(), str(self.record_path), hint=hint)
        if rec.get("num_classes") is not None and rec["num_classes"] != len(rec["classes"]):
            raise EdgekitError(
                f"{self.record_path}: classes lists {len(rec['classes'])} names but "
                f"num_classes is {rec['num_classes']}",
                hint,
            )
        return rec

    def check_onnx(self) -> None:
        """Refuse a missing, truncated or garbage ``WORK/model.onnx`` with one error line.

        Parsed with ``onnx.load`` and ``onnx.checker`` (skipped when onnx is not
        installed: the runtime install builds nothing from ONNX).

        Raises:
            EdgekitError: naming the file, with ``edgekit export --force`` as the fix.
        """
        hint = f"re-export it with: edgekit export --force --work-dir {self.root} ..."
        if not self.onnx.is_file():
            raise EdgekitError(f"{self.onnx} is missing", hint)
        try:
            import onnx
        except ImportError:
            return
        try:
            proto = onnx.load(str(self.onnx), load_external_data=False)
            onnx.checker.check_model(proto)
            if not proto.graph.node:
                raise ValueError("its graph has no nodes")
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise EdgekitError(
                f"{self.onnx} is not a valid ONNX model (truncated or corrupt: {first[:200]})",
                hint,
            ) from None


def record_schema():
    """The :mod:`edgekit.schema` spec of ``WORK/edgekit.json`` (fields that change behaviour).

    ``dataset`` and ``data_dir`` say where the test and calibration images come
    from, ``classes`` and ``preprocess`` feed every artifact's manifest, ``seed``
    the calibration sampler; informational fields (export check, history) are
    tables or values of any type.
    """
    from edgekit.data import MAX_LABEL
    from edgekit.preprocess import preprocess_schema
    from edgekit.schema import Dict, Int, ListOf, Num, Str

    return Dict(
        {
            "dataset": Str(r"[^\x00]{1,4096}", required=True),
            "data_dir": Str(r"[^\x00]{1,4096}", nullable=True),
            "model": Str(r"[^\x00]{1,256}", nullable=True),
            "num_classes": Int(min=1, max=MAX_LABEL + 1, nullable=True),
            "classes": ListOf(Str(), min_items=1, max_items=MAX_LABEL + 1, required=True),
            "preprocess": preprocess_schema(required=True),
            "weights": Str(nullable=True),
            "seed": Int(min=0, max=2**32 - 1, nullable=True),
            "train_device": Str(nullable=True),
            "seconds": Num(min=0, nullable=True),
        },
        extra=True,
    )


@dataclass
class ModelSpec:
    """What the user asked for: dataset, model and how to get weights."""

    dataset: str = "digits"
    data_dir: str | None = None
    model: str | None = None
    weights: str | None = None
    num_classes: int | None = None
    normalization: str | None = None
    epochs: int | None = None
    seed: int = 0
    exporter: str = "dynamo"
    simplify: bool = True
    opset: int = 18
    extra: dict = field(default_factory=dict)
    prune_ratio: float | None = None  # structured pruning (edgekit.prune) before export
    prune_options: dict = field(
        default_factory=dict
    )  # PruneConfig fields, finetune_epochs, finetune_minutes, recipe, lr, distill, kd_features
    #: the compression technique ``prune_ratio`` is a level of (:mod:`edgekit.compress`):
    #: ``channel`` is structured pruning as before (``prune_options`` a PruneConfig, the
    #: ratio a channel ratio unless ``by="macs"``); any other registered name runs
    #: :func:`edgekit.compress.driver.compress_model` at level ``prune_ratio`` with
    #: ``compress_options`` and the fine-tuning keys of ``prune_options``
    technique: str = "channel"
    compress_options: dict = field(default_factory=dict)
    device: str | None = None  # training/fine-tuning device: auto|cpu|cuda|cuda:N (None = auto)
    #: an in-memory ``torch.nn.Module`` (the Python API): exported as it is, never trained;
    #: the work directory then has no ``model.pt`` (no factory can rebuild it in another
    #: process), so the PyTorch-side targets (pytorch-fp32, torchscript-int8) are unavailable
    module: object = None


def load_workspace_dataset(rec: dict, dataset: str | None = None, data_dir: str | None = None):
    """The dataset of a workspace record (or the user's ``dataset``/``data_dir``).

    A dataset named by the record is never downloaded: it was loaded when the work
    directory was made, and a path read from a file must not choose where edgekit
    writes (an edited ``data_dir`` would otherwise receive a download).

    Raises:
        EdgekitError: the data cannot be loaded; when it came from the record, the
            message says so and that ``--dataset``/``--data-dir`` override it.
    """
    from edgekit.data import load_dataset

    if dataset:
        return load_dataset(dataset, data_dir, download=True)
    try:
        return load_dataset(rec["dataset"], data_dir or rec.get("data_dir"), download=False)
    except EdgekitError as e:
        raise EdgekitError(
            f"{e.message} (the dataset {rec['dataset']!r} recorded in the work directory's "
            f"{RECORD} when it was made)",
            "pass --dataset (and --data-dir) to say where the data is now",
        ) from None


def prepare(
    spec: ModelSpec, work: Path, force: bool = False, log=print, show_progress: bool = False
) -> Workspace:
    """Create a workspace: load data, load or train the model, export and check ONNX.

    Raises:
        EdgekitError: bad dataset/model/weights, a work directory that already
            holds artifacts without ``force``, a failed export check, or another
            edgekit process working in ``work`` (:func:`edgekit.fileio.workdir_lock`).
    """
    ws = Workspace(Path(work))
    if ws.root.exists() and not ws.root.is_dir():
        raise EdgekitError(f"{ws.root} exists and is not a directory")
    check_compression(spec)
    if spec.module is not None:
        _check_module(spec)  # before the work directory is created
    with ws.lock():
        return _prepare(spec, ws, force, log, show_progress)


def _prepare(spec: ModelSpec, ws: Workspace, force: bool, log, show_progress: bool) -> Workspace:
    from edgekit.data import load_dataset
    from edgekit.models import load_model, model_normalization
    from edgekit.preprocess import resolve_preprocess

    if spec.epochs is not None and spec.epochs < 0:  # -1 would export an untrained model
        raise EdgekitError(f"--epochs must be at least 0, got {spec.epochs}")
    if spec.seed < 0:
        raise EdgekitError(f"--seed must be at least 0, got {spec.seed}")
    if ws.has_artifacts() and not force:
        raise EdgekitError(
            f"{ws.root} already holds artifacts",
            "pass --force to replace them, or choose another --work-dir",
        )
    if force:
        check_only_artifacts(ws)
    if spec.weights is not None:
        require_file(spec.weights, "checkpoint")
    from edgekit.device import device_name, resolve_device

    dev = resolve_device(spec.device)
    t0 = time.perf_counter()
    ds = load_dataset(spec.dataset, spec.data_dir)
    log(
        f"dataset {ds.name}: {len(ds.train) if ds.train else 0} train / {len(ds.test)} test "
        f"images of {ds.image_size[0]}x{ds.image_size[1]}, {ds.num_classes} classes"
    )
    num_classes = spec.num_classes or ds.num_classes
    if ds.test.y.max() >= num_classes:
        raise EdgekitError(
            f"labels go up to {ds.test.y.max()} but the model has {num_classes} classes"
        )
    if spec.module is not None:
        model, meta, model_name = _in_memory(spec), {}, in_memory_name(spec.module)
    else:
        model_arg = spec.model or (None if spec.weights else DEFAULT_MODEL)
        if spec.weights is None:  # a model trained here: --seed fixes its initial weights too
            import torch

            torch.manual_seed(spec.seed)
        model, meta = load_model(
            model_arg,
            spec.weights,
            None if spec.weights and not spec.num_classes and not spec.model else num_classes,
        )
        model_name = meta.get("model", model_arg)
    pre = resolve_preprocess(ds, model_normalization(model_name), spec.normalization, meta)
    history = meta.get("history")
    if spec.weights is None and spec.module is None:
        from edgekit.train import TrainConfig, _rich_bar, fit

        epochs = spec.epochs if spec.epochs is not None else DEFAULT_EPOCHS
        cfg = TrainConfig(epochs=epochs, seed=spec.seed)
        log(f"training {model_name} for {epochs} epochs on {dev} (no --weights given)")
        prog, bar = _rich_bar(show_progress and sys.stderr.isatty())
        with prog or contextlib.nullcontext():
            history = fit(
                model,
                ds.split("train"),
                pre,
                cfg,
                hflip=ds.hflip,
                progress=lambda e, h: log(
                    f"  epoch {h['epoch']}/{epochs}: loss "
                    f"{h['loss']:.3f}, train top-1 {h['train_top1']:.1f}%"
                ),
                bar=bar,
                device=dev,
                log=log,
            )
        model.cpu()
    prune_record = None
    compress_record = meta.get("compression")  # a compressed checkpoint's own record
    if spec.prune_ratio and spec.technique != "channel":
        compress_record = _compress(spec, model, ds, pre, model_name, dev, log)
    elif spec.prune_ratio:
        from edgekit.prune import PruneConfig, finetune_config, prune_and_finetune

        opts = dict(spec.prune_options)
        ft_minutes = opts.pop("finetune_minutes", None)
        ft_epochs = opts.pop("finetune_epochs", None if ft_minutes else 2)
        distill = bool(opts.pop("distill", False))
        kd_features = float(opts.pop("kd_features", 0.0))
        tcfg = finetune_config(
            opts.pop("recipe", None),
            ft_epochs,
            ft_minutes,
            opts.pop("lr", None),
            seed=spec.seed,
            kd_features=kd_features,
        )
        pcfg = PruneConfig(ratio=spec.prune_ratio, **opts)
        budget = [f"{ft_epochs} epoch(s)"] if ft_epochs is not None else []
        budget += [f"at most {ft_minutes:g} min"] if ft_minutes else []
        log(
            f"pruning {model_name}: ratio {spec.prune_ratio} ({pcfg.by}), then "
            f"{', '.join(budget)} of fine-tuning on {dev}{' with distillation' if distill else ''}"
        )
        res, ft_hist = prune_and_finetune(
            model,
            ds.split("train"),
            pre,
            pcfg,
            tcfg,
            ds.hflip,
            distill,
            log=log,
            device=dev,
        )
        prune_record = {**res.to_dict(), "finetune_history": ft_hist}
    trained = (
        (spec.weights is None and spec.module is None)
        or bool(prune_record and prune_record["finetune_history"])
        or bool(spec.prune_ratio and compress_record and compress_record.get("finetune_history"))
    )
    train_device = device_name(dev) if trained else None
    # --weights WORK/model.pt --force: the user's input is about to be rewritten; keep its
    # bytes so that a failed export puts it back instead of deleting it with the rest
    own = spec.weights is not None and Path(spec.weights).resolve() == ws.checkpoint.resolve()
    saved_weights = ws.checkpoint.read_bytes() if own else None
    try:
        _write_workspace(
            ws,
            spec,
            ds,
            model,
            model_name,
            num_classes,
            pre,
            history,
            prune_record,
            t0,
            log,
            train_device,
            compress_record,
        )
    except BaseException:
        # leave no half-made workspace that looks valid, and never lose the user's --weights
        for p in (ws.record_path, ws.checkpoint, ws.onnx):
            p.unlink(missing_ok=True)
        if saved_weights is not None:
            with atomic_path(ws.checkpoint, force=True) as tmp:
                tmp.write_bytes(saved_weights)
        raise
    if ws.artifacts.is_dir() or ws.artifacts.is_symlink():  # --force: stale artifacts now
        remove_tree(ws.artifacts, ws.root)
    return ws


def _compress(spec: ModelSpec, model, ds, pre, model_name: str, dev, log) -> dict:
    """Compress ``model`` in place with ``spec.technique`` at level ``spec.prune_ratio``.

    Fine-tuning as for pruning (:func:`edgekit.prune.finetune_config`): 2 epochs by
    default, ``finetune_epochs``/``finetune_minutes``/``recipe``/``lr``/``distill`` from
    ``spec.prune_options``.

    Returns:
        The record of :func:`edgekit.compress.driver.compress_model`, with
        ``finetune_history``.
    """
    from edgekit.compress.driver import compress_model
    from edgekit.prune import finetune_config

    opts = dict(spec.prune_options)
    ft_minutes = opts.pop("finetune_minutes", None)
    ft_epochs = opts.pop("finetune_epochs", None if ft_minutes else 2)
    distill = bool(opts.pop("distill", False))
    tcfg = finetune_config(
        opts.pop("recipe", None), ft_epochs, ft_minutes, opts.pop("lr", None), seed=spec.seed
    )
    budget = [f"{ft_epochs} epoch(s)"] if ft_epochs is not None else []
    budget += [f"at most {ft_minutes:g} min"] if ft_minutes else []
    log(
        f"compressing {model_name}: {spec.technique} at level {spec.prune_ratio:g}, then "
        f"{', '.join(budget)} of fine-tuning on {dev}{' with distillation' if distill else ''}"
    )
    record, hist = compress_model(
        model,
        spec.technique,
        spec.prune_ratio,
        ds.split("train"),
        pre,
        options=spec.compress_options,
        train_cfg=tcfg,
        hflip=ds.hflip,
        distill=distill,
        device=dev,
        log=log,
    )
    return {**record, "finetune_history": hist}


def check_compression(spec: ModelSpec) -> None:
    """Check ``spec.technique`` and its level before any work.

    Raises:
        EdgekitError: an unknown technique; a level or option the technique refuses.
    """
    if spec.technique == "channel":
        return  # edgekit.prune's path; its PruneConfig is validated where it is built
    from edgekit.compress import get_technique

    tech = get_technique(spec.technique)
    if spec.prune_ratio is not None:
        tech.check(spec.prune_ratio, dict(spec.compress_options))


def in_memory_name(module) -> str:
    """The model name a work directory records for an in-memory module (no factory)."""
    return f"in-memory {type(module).__name__}"


def _check_module(spec: ModelSpec) -> None:
    """Refuse an in-memory ``spec.module`` that cannot be exported as asked.

    Raises:
        EdgekitError: not a ``torch.nn.Module``, or combined with options that need a
            named model (``weights``, ``model``, ``prune_ratio``).
    """

    import torch

    if not isinstance(spec.module, torch.nn.Module):
        raise EdgekitError(
            f"model must be a torch.nn.Module or a model name, got {type(spec.module).__name__}"
        )
    for name, value in (("weights", spec.weights), ("model", spec.model)):
        if value is not None:
            raise EdgekitError(
                f"an in-memory module takes no {name}= (it already has its weights)",
                "load the weights into the module first, or pass a model name instead",
            )
    if spec.prune_ratio:
        raise EdgekitError(
            "pruning needs a named model (its pruned structure is rebuilt from the name)",
            "pass a zoo name or package.module:factory with weights=",
        )


def _in_memory(spec: ModelSpec):
    """A CPU, eval-mode copy of ``spec.module`` (the caller's module is left untouched)."""
    import copy

    _check_module(spec)
    return copy.deepcopy(spec.module).cpu().eval()


def check_only_artifacts(ws: Workspace) -> None:
    """Refuse ``--force`` when ``WORK/artifacts`` holds something edgekit did not build.

    ``export``/``run --force`` replace the work directory's artifacts; a user who
    points ``--work-dir`` at a project folder with its own ``artifacts/`` must not
    lose it. Edgekit's entries are directories with a ``manifest.json`` and the
    ``.*.part``/``.*.old`` leftovers of a build.

    Raises:
        EdgekitError: naming the first entry that is not an edgekit artifact.
    """
    from edgekit.fileio import is_part_name
    from edgekit.manifest import MANIFEST_NAME

    if ws.artifacts.is_symlink() or not ws.artifacts.is_dir():
        return  # a link is removed itself, never followed
    for p in sorted(ws.artifacts.iterdir()):
        ours = is_part_name(p.name) or p.name.startswith(".") and p.name.endswith(".old")
        if not ours and not (p.is_dir() and not p.is_symlink() and (p / MANIFEST_NAME).is_file()):
            raise EdgekitError(
                f"{p} is not an edgekit artifact (no {MANIFEST_NAME}); --force would delete it",
                "move it out of the work directory, or choose another --work-dir",
            )


def _write_workspace(
    ws,
    spec,
    ds,
    model,
    model_name,
    num_classes,
    pre,
    history,
    prune_record,
    t0,
    log,
    train_device,
    compress_record=None,
):
    from edgekit.data import absolute_dataset
    from edgekit.export import export_onnx
    from edgekit.models import save_checkpoint

    ws.record_path.unlink(missing_ok=True)
    if spec.module is not None:  # no factory rebuilds it elsewhere: no checkpoint
        ws.checkpoint.unlink(missing_ok=True)
    else:
        save_checkpoint(
            ws.checkpoint,
            model,
            model_name,
            num_classes,
            force=True,
            classes=list(ds.classes),
            preprocess=pre.to_dict(),
            history=history or [],
            dataset=ds.name,
            device=train_device,
            **({"compression": compress_record} if compress_record else {}),
        )
    x = pre.apply(ds.test.x[:64])
    check = export_onnx(
        model,
        x,
        ws.onnx,
        opset=spec.opset,
        simplify=spec.simplify,
        exporter=spec.exporter,
        force=True,
    )
    log(
        f"exported {ws.onnx}: max |diff| vs PyTorch {check.max_abs_diff:.2e} "
        f"(tolerance {check.tolerance:.1e}), top-1 agreement {check.top1_agreement:.2%} "
        f"on {check.images} test images"
    )
    write_json(
        ws.record_path,
        {
            # absolute, so that the work directory is usable from any directory (issue 15)
            "dataset": absolute_dataset(ds.name),
            "data_dir": _absolute(spec.data_dir),
            "model": model_name,
            "num_classes": num_classes,
            "classes": list(ds.classes),
            "preprocess": pre.to_dict(),
            "weights": _absolute(spec.weights),
            "export_check": check.to_dict(),
            "seed": spec.seed,
            "pruning": prune_record,
            "compression": compress_record,
            "train_device": train_device,
            "seconds": round(time.perf_counter() - t0, 1),
        },
    )
    return ws


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().absolute())


def build_context(ws: Workspace, dataset=None, seed: int | None = None):
    from edgekit.backends.base import BuildContext
    from edgekit.preprocess import Preprocess

    rec = ws.record()
    ds = dataset or load_workspace_dataset(rec)
    return BuildContext(
        onnx_path=ws.onnx,
        # an in-memory module has no checkpoint; a named model's missing one is an error
        checkpoint_path=None
        if str(rec.get("model") or "").startswith("in-memory ") and not ws.checkpoint.is_file()
        else ws.checkpoint,
        preprocess=Preprocess.from_dict(rec["preprocess"]),
        classes=rec["classes"],
        calib_split=ds.train,
        calib_split_name="train",
        seed=(rec.get("seed") or 0) if seed is None else seed,
    )


def build(
    ws: Workspace,
    target_name: str,
    target_files=None,
    force: bool = False,
    dataset=None,
    onnx_only: bool = False,
) -> dict:
    """Build one target of the workspace into ``WORK/artifacts/TARGET``.

    With ``onnx_only`` (TensorRT targets), write only the ONNX the engine build
    would parse (Q/DQ INT8 or FP16) into ``WORK/onnx-for-tensorrt/TARGET``; no
    TensorRT or GPU is needed. Returns that directory's build record then.

    Holds the work directory's lock while building and first removes stale
    ``.*.part`` leftovers of killed processes.

    Raises:
        EdgekitError: not a work directory, a target name that is not a plain name,
            a truncated or corrupt ``WORK/model.onnx``, another edgekit process in
            the work directory, an existing artifact without ``force``, a
            file-system fault, or a failed build.
    """
    from edgekit.build import build_target
    from edgekit.targets import get_target

    target = get_target(target_name, target_files)
    out = (
        contained(ws.onnx_for_tensorrt, target.name, "target name", component=True, within=ws.root)
        if onnx_only
        else ws.artifact_dir(target.name)
    )
    ws.record()  # not a work directory: say so before creating anything in it
    with ws.lock():
        ws.clean_stale()
        ws.check_onnx()
        if onnx_only:
            from edgekit.backends.tensorrt import write_onnx_only

            return write_onnx_only(target, build_context(ws, dataset), ws.root, force=force)
        return build_target(target, build_context(ws, dataset), out, force=force)


def default_targets(target_files=None) -> list:
    from edgekit.targets import load_targets

    return list(load_targets(target_files).values())


def run(
    spec: ModelSpec,
    work: Path,
    *,
    targets: list[str] | None = None,
    target_files=None,
    cfg=None,
    threads: int | None = None,
    force: bool = False,
    log=print,
    show_progress: bool = False,
    label: str | None = None,
) -> list[dict]:
    """The main job: prepare, build every target, benchmark every artifact.

    A target that is unavailable or fails becomes a row with the reason; it never
    stops the others. Every target is built first; then all are measured by
    :func:`edgekit.harness.bench_many` (each in a fresh process, latency in
    interleaved rounds). Returns the report rows; the report
    (``report.json``/``.csv``/``.md`` and the PNG plots) is written into ``WORK``.
    ``label`` names the run in merged reports (``meta.run``; default: host and date).
    """
    from edgekit.harness import BenchConfig
    from edgekit.targets import get_target

    cfg = cfg or BenchConfig()
    ws = Workspace(Path(work))
    chosen = (
        [get_target(t, target_files) for t in targets] if targets else default_targets(target_files)
    )
    for t in chosen:  # a name that is not a plain name is refused before any work
        ws.artifact_dir(t.name)
    chosen.sort(key=lambda t: (t.name != "pytorch-fp32", t.name))
    if ws.root.exists() and not ws.root.is_dir():
        raise EdgekitError(f"{ws.root} exists and is not a directory")
    with ws.lock():
        return _run(spec, ws, chosen, cfg, threads, force, log, show_progress, label)


def _run(
    spec, ws: Workspace, chosen, cfg, threads, force, log, show_progress, label=None
) -> list[dict]:
    from edgekit.harness import (
        add_compression_notes,
        add_ratios,
        bench_many,
        environment,
        machine_load,
    )
    from edgekit.report import merge_reports, write_all

    ws = prepare(spec, ws.root, force=force, log=log, show_progress=show_progress)
    ws.clean_stale()
    rec = ws.record()
    ds = load_workspace_dataset(rec)
    ctx = build_context(ws, ds)
    rows: dict[str, dict] = {}
    # bars only on a terminal: piped into a log, rich would hold the log lines back
    prog = _targets_bar(show_progress and sys.stderr.isatty())
    task = prog.add_task("building", total=len(chosen)) if prog else None
    with prog or contextlib.nullcontext():
        for t in chosen:
            if prog:
                prog.update(task, description=f"building {t.name}")
            row = _build(t, ctx, ws, log)
            if row is not None:
                rows[t.name] = row
            if prog:
                prog.advance(task)
    built = [t.name for t in chosen if t.name not in rows]
    if built:
        log(f"benchmarking {len(built)} target(s) in {cfg.rounds} interleaved latency rounds")
    load = {"start": machine_load()}
    measured = bench_many(
        [ws.artifact_dir(n) for n in built], ds.test, cfg, threads, isolate=True, log=log
    )
    load["end"] = machine_load()
    for n, row in zip(built, measured, strict=True):
        row["target"] = n
        rows[n] = row
    out = [rows[t.name] for t in chosen]
    add_ratios(out)
    add_compression_notes(out, rec.get("compression"))
    report = {
        "schema": "edgekit-report/1",
        # where this run trained or fine-tuned (None: it only loaded weights)
        "environment": {**environment(threads, load), "train_device": rec.get("train_device")},
        "config": cfg.to_dict(),
        "meta": {
            "dataset": rec["dataset"],
            "model": rec["model"],
            "classes": rec.get("classes"),
            "labels": ds.test.y[: cfg.accuracy_images].tolist(),  # the images scored
            **({"run": label} if label else {}),
        },
        "rows": out,
    }
    write_all(merge_reports([report]), ws.root, stem="report")
    return out


def _targets_bar(enabled: bool):
    """A rich progress bar over the targets of ``run`` (on stderr), or None."""
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from edgekit.report import make_console

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=make_console(stderr=True),
        transient=True,
    )


def _build(t, ctx, ws: Workspace, log) -> dict | None:
    """Build one target; None when built, else its ``unavailable``/``failed`` row."""
    from edgekit.build import build_target
    from edgekit.harness import result_row
    from edgekit.targets import unavailable_reason

    reason = unavailable_reason(t)
    if reason:
        log(f"{t.name}: unavailable ({reason})")
        return result_row(None, status="unavailable", target=t.name, reason=reason)
    t0 = time.monotonic()
    try:
        log(f"{t.name}: building")
        build_target(t, ctx, ws.artifact_dir(t.name), force=True)
        log(f"{t.name}: built ({time.monotonic() - t0:.1f} s)")
        return None
    except UnavailableError as e:
        log(f"{t.name}: unavailable ({e})")
        return result_row(None, status="unavailable", target=t.name, reason=str(e))
    except EdgekitError as e:
        log(f"{t.name}: failed: {e}")
        return result_row(None, status="failed", target=t.name, reason=str(e))
    except Exception as e:  # a backend bug must not abort the other rows
        reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        log(f"{t.name}: failed: {reason}")
        return result_row(None, status="failed", target=t.name, reason=reason)
