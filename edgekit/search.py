"""``edgekit search``: per-stage channel pruning ratios under a measured latency budget.

The search closes the loop the MACs/FLOPs-driven pruning searches leave open: every
candidate is pruned, fine-tuned, exported, lowered to the target and *measured* on this
machine, and the objective is the top-1 of the lowered artifact under a p50 latency
constraint.

- **Space.** The prunable layers (:func:`edgekit.prune.prunable_layers`) are grouped by
  stage: the first component of their module name (``layer1``, ``layer2``, ... for the
  ResNets; ``conv1`` is a stage of its own). A model whose layers give fewer than two or
  more than :data:`MAX_STAGES` groups is searched with one global ratio. Each stage's
  ratio moves in steps of ``round_to`` channels (kept widths are multiples of it, as in
  ``edgekit prune``), from 0 to the largest ratio that leaves every layer of the stage
  ``round_to`` channels.
- **Trial.** Prune (DepGraph, adaptive BN: :func:`edgekit.prune.prune_and_finetune`),
  fine-tune with logits KD from the unpruned model for ``finetune_epochs`` on
  ``train_subset`` training images, export and check the ONNX, lower it to the target
  (:func:`edgekit.pipeline.build`), then measure the artifact with the harness
  (:func:`edgekit.harness.bench_many`, batch 1, 1 thread): its p50 latency interleaved in
  rounds with the unpruned model lowered to the same target, and its top-1 on a held-out
  slice of the *training* split.
- **Data.** The validation slice (:func:`edgekit.data.heldout_indices`) is class-balanced
  and disjoint from the target's calibration images and from the fine-tuning images
  (:func:`search_splits`). The test split is used once, for the chosen model's report.
- **Objective.** Maximise validation top-1 subject to p50 <= ``budget_ms``, or to
  (trial p50 / unpruned p50, median over the interleaved rounds) <= ``budget_ratio``:
  a ratio measured in the same rounds survives a change of the machine's load that an
  absolute budget does not. Optuna's TPE sampler (Bergstra et al. 2011, "Algorithms for
  Hyper-Parameter Optimization", NeurIPS), seeded, with its constraint handling (Optuna
  ``Trial.set_constraint``, after Gardner et al. 2014); the uniform ratios of
  ``edgekit prune --ratio`` are enqueued first, so the search includes the uniform
  baseline it must beat.
- **Output** in the work directory: ``search.json`` (every trial, the Pareto front, the
  budget, the chosen model), ``search.md`` (the table), ``search.png`` (latency against
  validation top-1, the front and the budget), ``model.pt`` (the chosen model, an edgekit
  checkpoint whose ``search`` metadata holds the re-measured latency of its lowered
  artifact and its test top-1), ``trials/tNNN/`` (one work directory per trial) and
  ``reference/`` (the unpruned model's). The study is journalled
  (``search-journal.log``): the same command resumes it; other options need ``--force``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

#: More stage groups than this: the model's names say nothing about stages; one global ratio.
MAX_STAGES = 8
#: No stage loses more than this fraction of its channels.
MAX_STAGE_RATIO = 0.95
STATE = "search-state.json"
JOURNAL = "search-journal.log"
#: What the search writes in its work directory (and ``--force`` replaces).
OUTPUTS = ("search.json", "search.md", "search.png", "model.pt", STATE, JOURNAL)
OUTPUT_DIRS = ("trials", "reference")


class BudgetNotMet(EdgekitError):
    """No trial met the latency budget (exit status 1, not a user mistake)."""

    exit_code = 1


@dataclass
class SearchConfig:
    """What to search and how to measure it.

    Attributes:
        target: the target every trial is lowered to and measured on (e.g. ``ort-cpu-int8``).
        budget_ms: p50 latency budget in milliseconds (batch 1), or None.
        budget_ratio: budget as a fraction of the unpruned model's p50 on the same target,
            measured in the same interleaved rounds, or None. Exactly one of the two.
        trials: distinct trials (the enqueued uniform ones included); a suggestion that
            repeats measured ratios reuses that row and does not count (nor run).
        finetune_epochs: KD fine-tuning epochs per trial (0: adaptive BN only).
        train_subset: training images each trial fine-tunes on.
        val_images: the held-out validation slice (training split), class-balanced.
        seed: seeds the sampler, the data slices, fine-tuning and calibration.
        distill: logits KD from the unpruned model while fine-tuning.
        importance: channel importance (see :class:`edgekit.prune.PruneConfig`).
        round_to: kept channel counts are multiples of this.
        lr: fine-tuning learning rate (None: :data:`edgekit.prune.FINETUNE_LR`).
        rounds: interleaved latency rounds per trial (trial and reference alternate).
        min_duration_s: seconds of timed batch-1 queries per artifact per trial.
        threads: intra-op threads of the runtime while measuring.
        uniform: uniform-ratio trials enqueued first (at most).
        depth: also search, per stage, how many of its droppable residual blocks are
            replaced by the identity (:mod:`edgekit.compress.depth`: the last ones of the
            stage go), before channel pruning; uniform depths (the same count in every
            stage) are enqueued after the uniform ratios. Removes operators: what pays on a
            model bound by its operator count (``benchmarks/depth_latency.py``).
    """

    target: str
    budget_ms: float | None = None
    budget_ratio: float | None = None
    trials: int = 12
    finetune_epochs: int = 1
    train_subset: int = 5000
    val_images: int = 2000
    seed: int = 0
    distill: bool = True
    importance: str = "l2"
    round_to: int = 8
    lr: float | None = None
    rounds: int = 5
    min_duration_s: float = 2.0
    threads: int = 1
    uniform: int = 3
    exporter: str = "dynamo"
    depth: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        """Refuse values that are out of range, before any work.

        Raises:
            EdgekitError: no budget or both budgets; a budget <= 0, NaN or infinite;
                trials, images, rounds or durations out of range.
        """
        if (self.budget_ms is None) == (self.budget_ratio is None):
            raise EdgekitError(
                "give exactly one latency budget: --budget-ms X or --budget-ratio R",
                "e.g. --budget-ratio 0.8 (80% of the unpruned model's p50 on the target)",
            )
        for opt, v in (("--budget-ms", self.budget_ms), ("--budget-ratio", self.budget_ratio)):
            if v is not None and not (0 < v < math.inf):  # NaN too
                raise EdgekitError(
                    f"{opt} must be a positive number, got {v}",
                    "--budget-ms 0.5 means p50 <= 0.5 ms; --budget-ratio 0.8 means <= 0.8x "
                    "the unpruned p50",
                )
        if self.budget_ratio is not None and self.budget_ratio > 10:
            raise EdgekitError(
                f"--budget-ratio {self.budget_ratio} is more than 10x the unpruned latency",
                "a ratio is a fraction of the unpruned p50, e.g. 0.8",
            )
        for opt, v, lo, hi in (
            ("--trials", self.trials, 1, 10_000),
            ("--finetune-epochs", self.finetune_epochs, 0, 1000),
            ("--train-subset", self.train_subset, 1, 10**8),
            ("--val-images", self.val_images, 1, 10**8),
            ("--seed", self.seed, 0, 2**32 - 1),
            ("--round-to", self.round_to, 1, 1024),
            ("--rounds", self.rounds, 1, 1000),
            ("--threads", self.threads, 1, 1024),
        ):
            if not lo <= v <= hi:
                raise EdgekitError(f"{opt} must be in [{lo}, {hi}], got {v}")
        if not 0 < self.min_duration_s <= 3600:
            raise EdgekitError(f"min_duration_s must be in (0, 3600], got {self.min_duration_s}")
        if self.exporter not in ("dynamo", "torchscript"):
            raise EdgekitError(f"--exporter must be dynamo or torchscript, got {self.exporter!r}")
        if self.lr is not None and not 0 < self.lr <= 100:
            raise EdgekitError(f"--lr must be in (0, 100], got {self.lr}")


@dataclass
class Stage:
    """One searched group of layers.

    Attributes:
        name: the stage (``layer2``) or ``all`` for the global fallback.
        layers: the module names pruned at the stage's ratio.
        width: the smallest output width among them; ratios step by ``round_to / width``.
        max_steps: the most ``round_to``-channel steps that leave every layer
            ``round_to`` channels.
    """

    name: str
    layers: list[str]
    width: int
    max_steps: int
    widths: list[int] = field(default_factory=list)

    def ratio(self, steps: int, round_to: int) -> float:
        """The channel ratio removing ``steps * round_to`` channels of the narrowest layer
        (a hair under it, so that torch-pruning's ``int(c * (1 - r))`` keeps exactly
        ``width - steps * round_to``)."""
        return 0.0 if steps <= 0 else steps * round_to / self.width - 1e-6


def _out_width(m) -> int:
    return int(getattr(m, "out_channels", None) or m.out_features)


def find_stages(model, round_to: int = 8, importance: str = "l2") -> list[Stage]:
    """The searchable stages of ``model`` (see the module docstring).

    Raises:
        EdgekitError: the model has no layer that can lose ``round_to`` channels.
    """
    from edgekit.prune import PruneConfig, _kept, prunable_layers

    cfg = PruneConfig(round_to=round_to, importance=importance)
    names = sorted(prunable_layers(model, cfg), key=list(dict(model.named_modules())).index)
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n.split(".")[0], []).append(n)
    if not 2 <= len(groups) <= MAX_STAGES:
        groups = {"all": names}
    stages = []
    for key, layers in groups.items():
        widths = [_out_width(model.get_submodule(n)) for n in layers]
        width = min(widths)
        st = Stage(key, layers, width, 0, widths)
        k = 0
        while True:
            r = st.ratio(k + 1, round_to)
            if r > MAX_STAGE_RATIO or any(_kept(c, r, round_to) < round_to for c in widths):
                break
            k += 1
        st.max_steps = k
        if k > 0:
            stages.append(st)
    if not stages:
        raise EdgekitError(
            f"no layer of this model can lose {round_to} output channels and keep {round_to}",
            "lower --round-to",
        )
    return stages


def uniform_steps(stages: list[Stage], ratio: float, round_to: int) -> dict[str, int]:
    """The per-stage steps that ``edgekit prune --ratio RATIO`` (uniform) removes:
    torch-pruning keeps ``int(c * (1 - ratio))`` rounded down to ``round_to``."""
    from edgekit.prune import _kept

    return {
        s.name: min(s.max_steps, (s.width - _kept(s.width, ratio, round_to)) // round_to)
        for s in stages
    }


def uniform_candidates(stages: list[Stage], round_to: int, n: int) -> list[float]:
    """Up to ``n`` uniform ratios spread up to the largest one that empties no stage,
    each giving other per-stage steps."""
    if n < 1:
        return []
    top = min(
        min(1.0 - (s.width - s.max_steps * round_to) / s.width for s in stages) + 1e-9,
        MAX_STAGE_RATIO,
    )
    out, seen = [], set()
    for i in range(1, n + 1):
        r = round(top * i / n, 4)
        key = tuple(sorted(uniform_steps(stages, r, round_to).items()))
        if any(v for _, v in key) and key not in seen:
            seen.add(key)
            out.append(r)
    return out


def search_splits(
    train_y: np.ndarray,
    calib_per_class: int,
    val_images: int,
    train_subset: int,
    seed: int,
    num_classes: int,
) -> dict[str, np.ndarray]:
    """Indices into the training split: ``calibration`` (the target's, as its builder
    draws them: :func:`edgekit.data.balanced_indices` with the same seed), ``validation``
    (held out, disjoint from calibration) and ``finetune`` (disjoint from validation).

    Raises:
        EdgekitError: the split is too small for the slices asked for.
    """
    from edgekit.data import balanced_indices, heldout_indices

    y = np.asarray(train_y)
    calib = (
        balanced_indices(y, calib_per_class, seed, num_classes=num_classes)
        if calib_per_class
        else np.zeros(0, np.int64)
    )
    val = heldout_indices(y, val_images, calib, seed, num_classes=num_classes)
    rest = np.setdiff1d(np.arange(len(y)), val)
    if len(rest) == 0:
        raise EdgekitError(
            f"the validation slice of {val_images} images leaves no training image to fine-tune on",
            "lower --val-images",
        )
    rng = np.random.default_rng([seed, 0xF1E7])
    ft = np.sort(rng.choice(rest, size=min(train_subset, len(rest)), replace=False))
    return {"calibration": calib, "validation": val, "finetune": ft.astype(np.int64)}


def _digest(idx: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(idx, np.int64).tobytes()).hexdigest()[:16]


def _fingerprint(cfg: SearchConfig, dataset: str, model: str | None, weights: str) -> dict:
    d = cfg.to_dict()
    d.pop("trials")  # more trials continue the same study
    return json.loads(
        json.dumps(
            {
                "config": d,
                "dataset": dataset,
                "model": model,
                "weights": str(Path(weights).absolute()),
            },
            sort_keys=True,
        )
    )


def _prepare_dir(work: Path, fp: dict, force: bool) -> bool:
    """Check (or clear, with ``force``) the work directory; True when resuming."""
    from edgekit.fileio import remove_tree

    if work.exists() and not work.is_dir():
        raise EdgekitError(f"{work} exists and is not a directory")
    state_path = work / STATE
    if force:
        for name in OUTPUTS:
            p = work / name
            if p.is_symlink() or p.is_file():
                p.unlink()
        for name in OUTPUT_DIRS:
            if (work / name).exists() or (work / name).is_symlink():
                remove_tree(work / name, work)
        return False
    if state_path.is_file():
        try:
            st = json.loads(state_path.read_text())
        except (OSError, ValueError, RecursionError) as e:
            raise EdgekitError(
                f"cannot resume the search in {work}: {e}", "pass --force to start over"
            ) from None
        if not isinstance(st, dict) or st.get("fingerprint") != fp:
            raise EdgekitError(
                f"{work} holds a search made with other options; it cannot be resumed with these",
                "pass --force to start over, or choose another --work-dir",
            )
        return True
    if work.is_dir() and any(work.iterdir()):
        raise EdgekitError(
            f"{work} is not empty and holds no edgekit search",
            "choose another --work-dir, or pass --force to write the search there",
        )
    return False


def torch_zeros(pre):
    """A float32 [1, 3, H, W] zero input for ``pre``'s image size."""
    import torch

    return torch.zeros(1, 3, pre.height, pre.width)


#: prefix of a depth parameter in a trial's ``steps`` (``drop:layer2`` = blocks dropped)
DROP = "drop:"


def depth_plan(groups: dict[str, list[str]], steps: dict) -> list[str]:
    """The blocks a trial drops: the last ``steps["drop:G"]`` blocks of each group G."""
    from edgekit.compress.depth import last_blocks

    return last_blocks(groups, {g: steps.get(DROP + g, 0) for g in groups})


def ratios_text(row: dict) -> str:
    """A trial's stage ratios (and dropped blocks) as one table cell."""
    text = " ".join(f"{k}={v:g}" for k, v in row["stage_ratios"].items())
    return text + ("; dropped " + ",".join(row["dropped"]) if row.get("dropped") else "")


def _latency_ratio(trial_row: dict, ref_row: dict) -> tuple[float, list[float]]:
    """Median and [min, max] of the per-round ratios trial p50 / reference p50."""
    a = trial_row["latency_ms"]["rounds_p50"]
    b = ref_row["latency_ms"]["rounds_p50"]
    rs = [x / y for x, y in zip(a, b, strict=True) if y > 0]
    return statistics.median(rs), [min(rs), max(rs)]


class _Search:
    """The state of one search: data, base model, reference artifact, trial runner."""

    def __init__(self, cfg, work, dataset, data_dir, model, weights, target_files, device, log):
        from edgekit.api import check_target_names
        from edgekit.data import load_dataset
        from edgekit.models import load_model, model_normalization
        from edgekit.preprocess import resolve_preprocess
        from edgekit.prune import meta_has_classes

        self.cfg, self.work, self.log = cfg, Path(work), log
        self.dataset, self.data_dir, self.weights = dataset, data_dir, weights
        self.target_files, self.device = target_files, device
        self.target = check_target_names([cfg.target], target_files)[0]
        ds = load_dataset(dataset, data_dir)
        self.ds = ds
        train = ds.split("train")
        m, meta = load_model(model, weights, None if meta_has_classes(weights) else ds.num_classes)
        self.base = m.cpu().eval()
        self.model_name = meta.get("model", model)
        if self.model_name is None:
            raise EdgekitError("the checkpoint does not name its model", "pass --model")
        self.num_classes = meta.get("num_classes", ds.num_classes)
        self.pre = resolve_preprocess(ds, model_normalization(self.model_name), None, meta)
        self.stages = find_stages(self.base, cfg.round_to, cfg.importance)
        self.depth: dict[str, list[str]] = {}
        if cfg.depth:
            from edgekit.compress.depth import droppable_blocks

            self.depth = droppable_blocks(self.base, torch_zeros(self.pre))
            if not self.depth:
                raise EdgekitError(
                    "--depth: the model has no droppable residual block (identity shortcut, "
                    "same shape in and out)",
                    "search without --depth",
                )
        from edgekit.prune import model_stats

        self.base_macs = model_stats(self.base, torch_zeros(self.pre))["macs"]
        per_class = int(self.target.options.get("calib_per_class") or 0)
        self.splits = search_splits(
            train.y, per_class, cfg.val_images, cfg.train_subset, cfg.seed, ds.num_classes
        )
        self.val = train.subset(self.splits["validation"])
        self.ft = train.subset(self.splits["finetune"])

    def splits_record(self) -> dict:
        return {
            k: {"images": int(len(v)), "sha256_16": _digest(v)} for k, v in self.splits.items()
        } | {"split": "train", "seed": self.cfg.seed}

    def bench_config(self, scale: float = 1.0):
        from edgekit.harness import BenchConfig

        c = self.cfg
        return BenchConfig(
            warmup_queries=20,
            min_queries=int(100 * scale),
            min_duration_s=c.min_duration_s * scale,
            batch_sizes=(1,),
            throughput_min_s=0.05,
            accuracy=True,
            rounds=max(2, int(c.rounds * scale)),
        )

    def workspace(self, checkpoint: Path, out: Path) -> Path:
        """Export ``checkpoint`` into the work directory ``out`` and lower it to the target;
        returns the artifact directory."""
        from edgekit.pipeline import ModelSpec, Workspace, build, prepare

        spec = ModelSpec(
            dataset=self.dataset,
            data_dir=self.data_dir,
            model=self.model_name,
            weights=str(checkpoint),
            seed=self.cfg.seed,
            exporter=self.cfg.exporter,
            device="cpu",
        )
        quiet = lambda *_: None  # noqa: E731
        ws = prepare(spec, out, force=True, log=quiet)
        build(ws, self.cfg.target, self.target_files, force=True)
        return Workspace(out).artifact_dir(self.cfg.target)

    def reference(self) -> Path:
        """The unpruned model lowered to the target (built once, reused on resume)."""
        from edgekit.manifest import MANIFEST_NAME

        out = self.work / "reference"
        art = out / "artifacts" / self.cfg.target
        if not (art / MANIFEST_NAME).is_file():
            self.log(f"lowering the unpruned model to {self.cfg.target} (the reference)")
            art = self.workspace(Path(self.weights), out)
        return art

    def measure(self, ref: Path, art: Path, test=None, scale: float = 1.0) -> tuple[dict, dict]:
        """Reference and candidate measured interleaved; accuracy on ``test`` (default:
        the validation slice)."""
        from edgekit.harness import bench_many

        rows = bench_many(
            [ref, art],
            self.val if test is None else test,
            self.bench_config(scale),
            threads=self.cfg.threads,
            isolate=True,
        )
        for r in rows:
            if r["status"] != "ok":
                raise EdgekitError(f"measuring {r.get('target')} failed: {r.get('reason')}")
        return rows[0], rows[1]

    def run_trial(self, number: int, steps: dict[str, int], ref: Path) -> dict:
        """Prune at ``steps``, fine-tune, lower, measure; the trial's row."""
        from edgekit.device import resolve_device
        from edgekit.models import save_checkpoint
        from edgekit.prune import PruneConfig, finetune_config, prune_and_finetune

        c = self.cfg
        t0 = time.monotonic()
        model = copy.deepcopy(self.base)
        dropped = depth_plan(self.depth, steps)  # blocks found droppable at start
        if dropped:
            from torch import nn

            from edgekit.structure import set_module

            for b in dropped:
                set_module(model, b, nn.Identity())
        alive = {n for n, _ in model.named_modules()}  # pruning removes channels, not modules
        per_layer = {n: s.ratio(steps[s.name], c.round_to) for s in self.stages for n in s.layers}
        per_layer = {n: r for n, r in per_layer.items() if r > 0 and n in alive}
        pcfg = PruneConfig(
            ratio=0.0, per_layer=per_layer, round_to=c.round_to, importance=c.importance
        )
        tcfg = finetune_config(None, c.finetune_epochs, None, c.lr, seed=c.seed)
        res, hist = prune_and_finetune(
            model,
            self.ft,
            self.pre,
            pcfg,
            tcfg,
            self.ds.hflip,
            c.distill,
            device=resolve_device(self.device),
        )
        tdir = self.work / "trials" / f"t{number:03d}"
        tdir.parent.mkdir(parents=True, exist_ok=True)
        ckpt = tdir.parent / f".t{number:03d}.pt"
        save_checkpoint(
            ckpt,
            model,
            self.model_name,
            self.num_classes,
            force=True,
            classes=list(self.ds.classes),
            preprocess=self.pre.to_dict(),
            dataset=self.ds.name,
            history=hist,
            pruning=res.to_dict(),
        )
        try:
            art = self.workspace(ckpt, tdir)
        finally:
            ckpt.unlink(missing_ok=True)
        ref_row, row = self.measure(ref, art)
        ratio, spread = _latency_ratio(row, ref_row)
        widths = {
            n: _out_width(model.get_submodule(n))
            for s in self.stages
            for n in s.layers
            if n in alive
        }
        return {
            "trial": number,
            "status": "ok",
            "steps": dict(steps),
            "stage_ratios": {
                s.name: round(
                    1
                    - min(
                        [
                            widths[n] / w
                            for n, w in zip(s.layers, s.widths, strict=True)
                            if n in widths
                        ]
                        or [1.0]
                    ),
                    4,
                )
                for s in self.stages
            },
            "dropped": dropped,
            "widths": widths,
            "macs": res.after["macs"],
            "params": res.after["params"],
            "macs_reduction": round(1 - res.after["macs"] / self.base_macs, 4),
            "val_top1": row["top1"],
            "ref_val_top1": ref_row["top1"],
            "p50_ms": row["latency_ms"]["p50"],
            "ref_p50_ms": ref_row["latency_ms"]["p50"],
            "latency_ratio": ratio,
            "latency_ratio_range": spread,
            "noisy": bool(row.get("noisy") or ref_row.get("noisy")),
            "size_mb": row.get("size_mb"),
            "dir": str(tdir.relative_to(self.work)),
            "seconds": round(time.monotonic() - t0, 1),
        }


def _constraint(cfg: SearchConfig, row: dict) -> float:
    """<= 0 when the row meets the budget (Optuna's convention)."""
    if cfg.budget_ratio is not None:
        return row["latency_ratio"] - cfg.budget_ratio
    return row["p50_ms"] - cfg.budget_ms


def search(
    cfg: SearchConfig,
    work: str | Path,
    *,
    dataset: str,
    weights: str | Path,
    model: str | None = None,
    data_dir: str | None = None,
    target_files=None,
    device: str | None = None,
    force: bool = False,
    log=print,
) -> dict:
    """Run the search (see the module docstring); returns the ``search.json`` record.

    Raises:
        EdgekitError: bad options, an unknown target (both before any work), a target
            unavailable here, a work directory holding something else (without
            ``force``).
        BudgetNotMet: no trial met the budget (the record is written first; the
            message gives the best latency reached).
    """
    import optuna

    from edgekit.api import check_target_names
    from edgekit.fileio import require_file, workdir_lock
    from edgekit.harness import check_threads, environment, machine_load
    from edgekit.targets import unavailable_reason

    cfg.check()
    target = check_target_names([cfg.target], target_files)[0]
    check_threads(cfg.threads)
    require_file(weights, "checkpoint")
    from edgekit.prune import IMPORTANCES

    if cfg.importance not in IMPORTANCES:
        raise EdgekitError(
            f"unknown importance {cfg.importance!r}", f"use one of {', '.join(IMPORTANCES)}"
        )
    reason = unavailable_reason(target)
    if reason:
        err = EdgekitError(f"target {cfg.target} cannot run here: {reason}")
        err.exit_code = 1
        raise err
    work = Path(work)
    from edgekit.data import absolute_dataset

    fp = _fingerprint(cfg, absolute_dataset(dataset), model, str(weights))
    resuming = _prepare_dir(work, fp, force)
    work.mkdir(parents=True, exist_ok=True)
    with workdir_lock(work):
        s = _Search(cfg, work, dataset, data_dir, model, str(weights), target_files, device, log)
        from edgekit.fileio import write_json

        write_json(work / STATE, {"schema": "edgekit-search-state/1", "fingerprint": fp})
        log(
            "stages: "
            + ", ".join(
                f"{st.name} ({len(st.layers)} layers, width {st.width}, ratio 0..{st.ratio(st.max_steps, cfg.round_to):.3f})"
                for st in s.stages
            )
        )
        load = {"start": machine_load()}
        ref = s.reference()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(str(work / JOURNAL)))
        uniform = uniform_candidates(
            s.stages, cfg.round_to, min(cfg.uniform, max(1, cfg.trials - 1))
        )
        sampler = optuna.samplers.TPESampler(
            seed=cfg.seed,
            n_startup_trials=len(uniform) + max(1, cfg.trials // 4),
        )
        study = optuna.create_study(
            study_name="edgekit-search",
            storage=storage,
            sampler=sampler,
            direction="maximize",
            load_if_exists=True,
        )
        finished = [t for t in study.trials if t.state.is_finished() and "row" in t.user_attrs]
        if resuming and finished:
            log(f"resuming the search in {work}: {len(finished)} trial(s) already done")
        if not study.trials:
            no_drop = {f"drop_{g}": 0 for g in s.depth}
            for u in uniform:
                study.enqueue_trial(
                    {f"steps_{k}": v for k, v in uniform_steps(s.stages, u, cfg.round_to).items()}
                    | no_drop,
                    user_attrs={"uniform": u},
                )
            if s.depth:  # uniform depths: k blocks of every stage (as many as it has)
                for k in range(1, max(len(b) for b in s.depth.values())):
                    study.enqueue_trial(
                        {f"steps_{st.name}": 0 for st in s.stages}
                        | {f"drop_{g}": min(k, len(b)) for g, b in s.depth.items()},
                        user_attrs={"uniform": f"depth {k}"},
                    )

        # ratios already measured: a repeat suggestion (TPE repeats itself in a small
        # discrete space) reuses the row instead of spending a fine-tune, and does not count
        measured = {
            _key(t.user_attrs["row"]["steps"]): t.user_attrs["row"]
            for t in finished
            if not t.user_attrs["row"].get("duplicate_of")
        }
        space = math.prod(st.max_steps + 1 for st in s.stages)
        space *= math.prod(len(b) + 1 for b in s.depth.values())
        wanted = min(cfg.trials, space)

        def objective(trial):
            steps = {
                st.name: trial.suggest_int(f"steps_{st.name}", 0, st.max_steps) for st in s.stages
            }
            for g, blocks in s.depth.items():
                steps[DROP + g] = trial.suggest_int(f"drop_{g}", 0, len(blocks))
            kind = (
                f"uniform {trial.user_attrs['uniform']}" if "uniform" in trial.user_attrs else "tpe"
            )
            prev = measured.get(_key(steps))
            if prev is not None:
                row = {
                    **prev,
                    "trial": trial.number,
                    "duplicate_of": prev["trial"],
                    "uniform": trial.user_attrs.get("uniform"),
                    "seconds": 0.0,
                }
                trial.set_constraint(
                    "latency", _constraint(cfg, prev) if prev["status"] == "ok" else math.inf
                )
                trial.set_user_attr("row", row)
                log(
                    f"trial {trial.number} ({kind}): the ratios of trial {prev['trial']}, not measured again"
                )
                return prev["val_top1"] if prev["status"] == "ok" else float("nan")
            log(f"trial {trial.number} ({kind}): steps {steps}")
            try:
                row = s.run_trial(trial.number, steps, ref)
            except EdgekitError as e:
                row = {"trial": trial.number, "status": "failed", "reason": str(e), "steps": steps}
                trial.set_user_attr("row", row)
                trial.set_constraint("latency", math.inf)
                measured[_key(steps)] = row
                log(f"trial {trial.number}: failed: {e}")
                return float("nan")
            row["uniform"] = trial.user_attrs.get("uniform")
            row["meets_budget"] = _constraint(cfg, row) <= 0
            trial.set_constraint("latency", _constraint(cfg, row))
            trial.set_user_attr("row", row)
            measured[_key(steps)] = row
            log(
                f"trial {trial.number}: val top-1 {row['val_top1']:.2f}%, p50 {row['p50_ms']:.3f} ms "
                f"= {row['latency_ratio']:.3f}x the unpruned ({row['ref_p50_ms']:.3f} ms), "
                f"MACs -{row['macs_reduction']:.1%}, "
                f"{'meets' if row['meets_budget'] else 'misses'} the budget ({row['seconds']:.0f} s)"
            )
            return row["val_top1"]

        def enough(study, _trial):
            if len(measured) >= wanted:
                study.stop()

        if len(measured) < wanted:
            # repeats do not count, so the loop ends on the distinct trials (capped)
            study.optimize(objective, n_trials=20 * cfg.trials, catch=(), callbacks=[enough])
        rows = [
            t.user_attrs["row"]
            for t in sorted(study.trials, key=lambda t: t.number)
            if t.state.is_finished() and "row" in t.user_attrs
        ]
        record = _record(cfg, s, rows, fp)
        record["environment"] = environment(cfg.threads, {**load, "end": machine_load()})
        ok = [r for r in rows if r["status"] == "ok" and not r.get("duplicate_of")]
        feasible = sorted(
            (r for r in ok if r["meets_budget"]),
            key=lambda r: (-r["val_top1"], r["latency_ratio"]),
        )
        if not feasible:
            _write(work, record)
            if not ok:
                raise BudgetNotMet("every trial failed; see search.md for the reasons")
            best = min(ok, key=lambda r: r["latency_ratio"])
            raise BudgetNotMet(
                f"no trial met the budget ({_budget_text(cfg)}): the fastest, trial "
                f"{best['trial']}, reached p50 {best['p50_ms']:.3f} ms = "
                f"{best['latency_ratio']:.3f}x the unpruned {best['ref_p50_ms']:.3f} ms "
                f"on {cfg.target} (val top-1 {best['val_top1']:.2f}%)",
                f"raise the budget to at least {_suggest(cfg, best)}, or search another "
                f"target; {work / 'search.md'} has every trial",
            )
        chosen = None
        for cand in feasible[:3]:  # a candidate that fails re-measurement: the next one
            art = work / cand["dir"] / "artifacts" / cfg.target
            log(
                f"re-measuring trial {cand['trial']} against the unpruned model "
                f"(latency, and top-1 on the {len(s.ds.test)} test images)"
            )
            ref_row, row = s.measure(ref, art, test=s.ds.test, scale=2.0)
            ratio, spread = _latency_ratio(row, ref_row)
            re = {
                "trial": cand["trial"],
                "p50_ms": row["latency_ms"]["p50"],
                "p90_ms": row["latency_ms"]["p90"],
                "ref_p50_ms": ref_row["latency_ms"]["p50"],
                "latency_ratio": ratio,
                "latency_ratio_range": spread,
                "rounds": row["latency_ms"]["rounds"],
                "test_top1": row["top1"],
                "ref_test_top1": ref_row["top1"],
                "test_images": len(s.ds.test),
                "size_mb": row.get("size_mb"),
                "noisy": bool(row.get("noisy") or ref_row.get("noisy")),
            }
            re["meets_budget"] = _constraint(cfg, {**cand, **re}) <= 0
            record.setdefault("remeasured", []).append(re)
            log(
                f"trial {cand['trial']} re-measured: p50 {re['p50_ms']:.3f} ms = "
                f"{ratio:.3f}x the unpruned (rounds {spread[0]:.3f}-{spread[1]:.3f}), "
                f"test top-1 {re['test_top1']:.2f}% (unpruned {re['ref_test_top1']:.2f}%): "
                f"{'meets' if re['meets_budget'] else 'misses'} the budget"
            )
            if re["meets_budget"]:
                chosen = {**cand, "remeasured": re}
                break
        record["chosen"] = chosen
        if chosen is None:
            _write(work, record)
            raise BudgetNotMet(
                "the best trials met the budget in the search but not on re-measurement "
                "(the machine's load changed?)",
                "re-run when the machine is quiet, or with a looser budget",
            )
        _save_chosen(work, chosen, record)
        _write(work, record)
        log(f"chose trial {chosen['trial']}: wrote {work / 'model.pt'}")
        return record


def uniform_text(u) -> str:
    """How a trial's kind reads: ``uniform 0.5`` (a ratio), ``uniform depth 1``, ``TPE``."""
    if u is None:
        return "TPE"
    return f"uniform {u:g}" if isinstance(u, int | float) else f"uniform {u}"


def _key(steps: dict) -> tuple:
    return tuple(sorted(steps.items()))


def _budget_text(cfg: SearchConfig) -> str:
    if cfg.budget_ratio is not None:
        return f"p50 <= {cfg.budget_ratio:g}x the unpruned p50"
    return f"p50 <= {cfg.budget_ms:g} ms"


def _suggest(cfg: SearchConfig, best: dict) -> str:
    if cfg.budget_ratio is not None:
        return f"--budget-ratio {math.ceil(best['latency_ratio'] * 100) / 100:g}"
    return f"--budget-ms {math.ceil(best['p50_ms'] * 1000) / 1000:g}"


def _record(cfg: SearchConfig, s: _Search, rows: list[dict], fp: dict) -> dict:
    from edgekit.report import pareto_front

    ok = [r for r in rows if r["status"] == "ok" and not r.get("duplicate_of")]
    front = pareto_front([(r["latency_ratio"], r["val_top1"]) for r in ok])
    front_ids = [ok[i]["trial"] for i in front]
    for r in rows:
        r["pareto"] = r["trial"] in front_ids
    ref_p50 = [r["ref_p50_ms"] for r in ok]
    return {
        "schema": "edgekit-search/1",
        "target": cfg.target,
        "model": s.model_name,
        "dataset": s.ds.name,
        "config": cfg.to_dict(),
        "budget": {
            "ms": cfg.budget_ms,
            "ratio": cfg.budget_ratio,
            "text": _budget_text(cfg),
            # the other form of the budget, from the unpruned p50 measured in this run
            "unpruned_p50_ms_median": statistics.median(ref_p50) if ref_p50 else None,
            "ms_equivalent": (
                cfg.budget_ms
                if cfg.budget_ms is not None
                else (cfg.budget_ratio * statistics.median(ref_p50) if ref_p50 else None)
            ),
            "ratio_equivalent": (
                cfg.budget_ratio
                if cfg.budget_ratio is not None
                else (cfg.budget_ms / statistics.median(ref_p50) if ref_p50 else None)
            ),
        },
        "stages": [
            {
                "name": st.name,
                "layers": st.layers,
                "width": st.width,
                "max_ratio": round(st.ratio(st.max_steps, cfg.round_to), 4),
            }
            for st in s.stages
        ],
        "data": s.splits_record(),
        "reference_val_top1": ok[0]["ref_val_top1"] if ok else None,
        "trials": rows,
        "pareto": front_ids,
        "chosen": None,
        "fingerprint": fp,
    }


def _save_chosen(work: Path, chosen: dict, record: dict) -> None:
    """``WORK/model.pt``: the chosen trial's checkpoint with the ``search`` metadata."""
    import torch

    from edgekit.fileio import atomic_path

    src = work / chosen["dir"] / "model.pt"
    obj = torch.load(src, map_location="cpu", weights_only=True)
    obj["search"] = json.loads(
        json.dumps(
            {
                "target": record["target"],
                "budget": record["budget"],
                "trial": chosen["trial"],
                "steps": chosen["steps"],
                "stage_ratios": chosen["stage_ratios"],
                "val_top1": chosen["val_top1"],
                "remeasured": chosen["remeasured"],
                "data": record["data"],
            }
        )
    )
    with atomic_path(work / "model.pt", force=True) as tmp:
        torch.save(obj, tmp)


def _write(work: Path, record: dict) -> None:
    from edgekit.fileio import atomic_path, write_json

    write_json(work / "search.json", record)
    with atomic_path(work / "search.md", force=True) as tmp:
        tmp.write_text(markdown_table(record))
    plot_search(record, work / "search.png")


def _f(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def markdown_table(record: dict) -> str:
    """Every trial: kind, per-stage ratios, MACs, validation top-1, p50 and its ratio to
    the unpruned model (median and range over the interleaved rounds), budget, front."""
    b = record["budget"]
    lines = [
        f"# edgekit search: {record['model']} on {record['target']}",
        "",
        f"Budget: {b['text']} (= {_f(b['ms_equivalent'], '.3f')} ms = "
        f"{_f(b['ratio_equivalent'], '.3f')}x the unpruned p50, median "
        f"{_f(b['unpruned_p50_ms_median'], '.3f')} ms in this run). Validation: "
        f"{record['data']['validation']['images']} held-out training images (unpruned model "
        f"lowered to {record['target']}: {_f(record['reference_val_top1'])}%).",
        "",
        "| trial | kind | stage ratios | MACs (M) | val top-1 % | p50 ms | x unpruned | "
        "round range | budget | Pareto |",
        "|---:|---|---|---:|---:|---:|---:|---|---|---|",
    ]
    chosen = (record.get("chosen") or {}).get("trial")
    for r in record["trials"]:
        if r["status"] != "ok":
            lines.append(
                f"| {r['trial']} | failed | {r.get('steps')} | - | - | - | - | - | - | "
                f"{r.get('reason', '')} |"
            )
            continue
        kind = uniform_text(r.get("uniform"))
        if r.get("duplicate_of") is not None:
            kind += f" (= trial {r['duplicate_of']}, not re-measured)"
        ratios = ratios_text(r)
        lo, hi = r["latency_ratio_range"]
        mark = "**chosen**" if r["trial"] == chosen else ("yes" if r["meets_budget"] else "no")
        lines.append(
            f"| {r['trial']} | {kind} | {ratios} | {r['macs'] / 1e6:.2f} | {r['val_top1']:.2f} | "
            f"{r['p50_ms']:.3f} | {r['latency_ratio']:.3f} | {lo:.3f}-{hi:.3f} | {mark} | "
            f"{'yes' if r['pareto'] else ''} |"
        )
    for re in record.get("remeasured") or []:
        lines += [
            "",
            f"Re-measured trial {re['trial']} ({re['rounds']} rounds, against the unpruned "
            f"model): p50 {re['p50_ms']:.3f} ms = {re['latency_ratio']:.3f}x "
            f"(rounds {re['latency_ratio_range'][0]:.3f}-{re['latency_ratio_range'][1]:.3f}); "
            f"test top-1 {re['test_top1']:.2f}% on {re['test_images']} images (unpruned "
            f"{re['ref_test_top1']:.2f}%); "
            f"{'meets' if re['meets_budget'] else 'misses'} the budget.",
        ]
    env = record.get("environment") or {}
    load = (env.get("load") or {}).get("end") or {}
    if load:
        lines += [
            "",
            f"Load average at the end: {load.get('loadavg')}; threads {env.get('threads')}.",
        ]
    return "\n".join(lines) + "\n"


def plot_search(record: dict, path: Path) -> Path:
    """Validation top-1 against p50 latency (ms) of every trial: uniform trials as
    squares, TPE trials as circles, the Pareto front joined, the budget as a vertical
    line, the chosen model starred."""
    from edgekit.fileio import atomic_path
    from edgekit.report import _plt, plot_context

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ok = [r for r in record["trials"] if r["status"] == "ok" and not r.get("duplicate_of")]
    for uni, marker, label in ((False, "o", "TPE trials"), (True, "s", "uniform ratio")):
        pts = [r for r in ok if (r.get("uniform") is not None) == uni]
        if pts:
            ax.scatter(
                [r["p50_ms"] for r in pts],
                [r["val_top1"] for r in pts],
                marker=marker,
                c=["tab:blue" if r["meets_budget"] else "tab:gray" for r in pts],
                label=label,
                zorder=3,
            )
    for r in ok:
        ax.annotate(
            str(r["trial"]),
            (r["p50_ms"], r["val_top1"]),
            xytext=(3, 3),
            textcoords="offset points",
            fontsize=7,
        )
    front = sorted((r for r in ok if r.get("pareto")), key=lambda r: r["p50_ms"])
    if front:
        ax.plot(
            [r["p50_ms"] for r in front],
            [r["val_top1"] for r in front],
            "-",
            c="tab:orange",
            label="Pareto front",
            zorder=2,
        )
    b = record["budget"]
    if b.get("ms_equivalent"):
        ax.axvline(b["ms_equivalent"], ls="--", c="tab:red", label=f"budget ({b['text']})")
    if b.get("unpruned_p50_ms_median") and record.get("reference_val_top1") is not None:
        ax.scatter(
            [b["unpruned_p50_ms_median"]],
            [record["reference_val_top1"]],
            marker="D",
            c="black",
            label="unpruned",
            zorder=3,
        )
    ch = record.get("chosen")
    if ch:
        ax.scatter(
            [ch["p50_ms"]],
            [ch["val_top1"]],
            marker="*",
            s=220,
            c="tab:green",
            label=f"chosen (trial {ch['trial']})",
            zorder=4,
        )
    ax.set(
        xlabel="p50 latency, batch 1 (ms; measured in each trial beside the unpruned model)",
        ylabel="validation top-1 (%, held-out training images)",
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    env = record.get("environment") or {}
    ctx = plot_context(
        {"environment": env, "meta": {"model": record["model"], "dataset": record["dataset"]}}
    )
    fig.suptitle(
        f"edgekit search: {record['model']} on {record['target']}, {b['text']}\n{ctx}",
        fontsize=9,
    )
    fig.tight_layout()
    with atomic_path(path, force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
