"""The protocol every backend implements: a builder and a runner.

Modelled on Polygraphy's split of loaders and runners: a *builder* turns the
exported ONNX (or the checkpoint) into one artifact file; a *runner* loads that
artifact and maps a float32 [N, C, H, W] batch to float32 [N, classes] logits.
The harness only ever talks to :class:`Runner`, never to a backend directly.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgekit.errors import EdgekitError


class Runner(Protocol):
    """A loaded artifact.

    Attributes:
        device: ``"cpu"`` or ``"cuda"``.
        batch_range: ``(min, max)`` batch sizes the artifact accepts; ``max`` None
            means unbounded.
    """

    device: str
    batch_range: tuple[int, int | None]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """float32 [N, C, H, W] (C-contiguous) -> float32 [N, classes] logits."""

    def close(self) -> None:
        """Release the session/engine and its memory."""


@dataclass
class BuildResult:
    """What a builder wrote into the artifact directory.

    Attributes:
        artifact: file name of the main artifact.
        io: input/output description for the manifest (see :func:`make_manifest`).
        calibration: the calibration record, for quantized targets.
        extra: backend-specific manifest fields.
    """

    artifact: str
    io: dict
    calibration: dict | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class BuildContext:
    """Everything a builder may need; heavy parts are loaded on demand.

    Attributes:
        onnx_path: the exported FP32 ONNX model.
        checkpoint_path: the edgekit checkpoint the ONNX came from (for the
            PyTorch-side targets); None when only an ONNX file was given.
        preprocess: :class:`edgekit.preprocess.Preprocess` of the model.
        classes: class names.
        calib_split: the split calibration images are drawn from (usually train).
        calib_split_name: its name, for the manifest.
        seed: calibration sampling seed.
    """

    onnx_path: Path | None
    checkpoint_path: Path | None
    preprocess: Any
    classes: list[str]
    calib_split: Any = None
    calib_split_name: str = "train"
    seed: int = 0

    def calibration_set(self, per_class: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """A class-balanced calibration set, preprocessed exactly as for evaluation.

        Returns:
            ``(x float32 [k*C, 3, H, W], y int64 [k*C], record for the manifest)``.

        Raises:
            EdgekitError: no split to draw from, or a class with fewer than ``per_class``.
        """
        from edgekit.data import balanced_indices

        if self.calib_split is None:
            raise EdgekitError(
                "this target needs calibration images",
                "give a dataset with --dataset (its train split is used)",
            )
        idx = balanced_indices(
            self.calib_split.y,
            per_class,
            self.seed,
            num_classes=len(self.classes),
            class_names=self.classes,
        )
        x = self.preprocess.apply(self.calib_split.x[idx])
        rec = {
            "split": self.calib_split_name,
            "per_class": per_class,
            "seed": self.seed,
            "images": int(len(idx)),
            "sampler": "class-balanced",
        }
        return x, self.calib_split.y[idx], rec

    def validation_set(
        self, images: int, calib_per_class: int
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """A class-balanced held-out slice of the calibration split, for decisions.

        Disjoint from :meth:`calibration_set` ``(calib_per_class)``; never the test
        split. Quantization choices that compare top-1 (``calibration_method = "auto"``,
        ``max_drop``) are made on it.

        Returns:
            ``(x float32 [images, 3, H, W], y int64 [images], record for the manifest)``.

        Raises:
            EdgekitError: no split to draw from, or too few unused images per class
                (:func:`edgekit.data.heldout_indices`).
        """
        from edgekit.data import balanced_indices, heldout_indices

        if self.calib_split is None:
            raise EdgekitError(
                "this target needs held-out training images to choose its quantization",
                "give a dataset with --dataset (its train split is used)",
            )
        calib = balanced_indices(
            self.calib_split.y, calib_per_class, self.seed, num_classes=len(self.classes)
        )
        idx = heldout_indices(
            self.calib_split.y, images, calib, self.seed, num_classes=len(self.classes)
        )
        x = self.preprocess.apply(self.calib_split.x[idx])
        rec = {
            "split": self.calib_split_name,
            "images": int(len(idx)),
            "seed": self.seed,
            "sampler": "class-balanced, disjoint from the calibration images",
        }
        return x, self.calib_split.y[idx], rec

    def calibration_for(self, target_name: str, per_class: int):
        """:meth:`calibration_set` with the error naming the target and its option.

        Raises:
            EdgekitError: as :meth:`calibration_set`, hinting at ``calib_per_class``.
        """
        try:
            return self.calibration_set(per_class)
        except EdgekitError as e:
            raise EdgekitError(
                f"{target_name}: calibration set smaller than asked: {e.message}",
                f"lower calib_per_class (now {per_class}) in the target file "
                "(--target-file), or give a dataset with more training images",
            ) from None

    def torch_model(self):
        """The FP32 PyTorch model in eval mode, from ``checkpoint_path``.

        Raises:
            EdgekitError: no checkpoint (the target needs the PyTorch model, not ONNX),
                or NaN/Inf weights (refused as it loads: :func:`edgekit.models.check_finite`).
        """
        if self.checkpoint_path is None:
            from edgekit.errors import UnavailableError

            raise UnavailableError(
                "this target is built from the PyTorch model (an edgekit checkpoint), not the "
                "ONNX file, and the work directory has none (e.g. an in-memory model)",
                "give --weights (an edgekit checkpoint) or use edgekit run",
            )
        from edgekit.models import load_model

        model, _ = load_model(None, self.checkpoint_path, None)
        return model


_WARNED: set[tuple[str, str]] = set()


def _warn_once(where: str, what: str, warn: bool) -> None:
    if warn and (where, what) not in _WARNED:
        _WARNED.add((where, what))
        import sys

        print(f"warning: {where}: {what} (the old spelling still works)", file=sys.stderr)


class Backend:
    """Base class of a backend; subclasses override the hooks.

    Attributes:
        name: the ``backend`` value in target files.
        packages: import names the backend needs (checked with :func:`is_installed`).
        install_hint: what to install when they are missing.
        option_defaults: precision -> option name -> default. Keys define the
            allowed options; a target file naming another key is an error.
        option_specs: option name -> :class:`edgekit.schema.Field` (type, allowed
            values, range) for every option of every precision. Target files and
            manifests are checked against it, so a builder or runner never sees
            ``per_channel = "no"`` or ``execution_provider = 42``.
    """

    name = ""
    packages: tuple[str, ...] = ()
    install_hint = ""
    option_defaults: dict[str, dict[str, Any]] = {}
    option_specs: dict[str, Any] = {}
    #: old option name -> the name shared across backends (still accepted, with a warning)
    option_aliases: dict[str, str] = {}
    #: option -> old value -> the shared spelling (still accepted, with a warning)
    value_aliases: dict[str, dict[str, str]] = {}

    def canonical_options(self, options: dict, where: str = "", warn: bool = True) -> dict:
        """``options`` with old option names and values in their shared spelling.

        One vocabulary across backends (issue 15): ``calib_per_class``,
        ``calib_batch``, ``percentile`` and lower-case ``calibration_method`` values
        (``minmax``, ``entropy``, ``percentile``). Old spellings keep working; with
        ``warn`` each is named once on stderr, with the new spelling.
        """
        out = {}
        for key, value in options.items():
            new_key = self.option_aliases.get(key, key)
            if new_key != key:
                _warn_once(where, f"option {key} is now spelled {new_key}", warn)
                if new_key in options:
                    raise EdgekitError(
                        f"{where}: options {key} and {new_key} are the same option",
                        f"keep only {new_key}",
                    )
            aliases = self.value_aliases.get(new_key, {})
            if isinstance(value, str) and value in aliases:
                _warn_once(where, f"{new_key} = {value!r} is now spelled {aliases[value]!r}", warn)
                value = aliases[value]
            out[new_key] = value
        return out

    def resolve_options(
        self, precision: str, options: Any, where: str = "", warn: bool = True
    ) -> dict:
        """Merge target-file options over the defaults after checking them.

        Args:
            options: the ``[options]`` table (or a manifest's ``options``).
            where: the file, named first in errors.

        Raises:
            EdgekitError: an unknown precision or option, or a value of the wrong
                type or outside its allowed values/range (see :attr:`option_specs`).
        """
        from edgekit.schema import validate

        defaults = self.option_defaults.get(precision)
        if defaults is None:
            raise EdgekitError(
                f"{where}: backend {self.name!r} has no {precision!r} precision",
                f"it offers {', '.join(self.option_defaults)}",
            )
        if not isinstance(options, dict):
            raise EdgekitError(
                f"{where}: options must be a table/object of option = value, got "
                f"{type(options).__name__}",
                f"allowed options: {', '.join(sorted(defaults)) or 'none'}",
            )
        options = self.canonical_options(options, where, warn)
        unknown = set(options) - set(defaults)
        if unknown:
            raise EdgekitError(
                f"{where}: unknown option(s) {', '.join(sorted(map(str, unknown)))} for "
                f"{self.name} {precision}",
                f"allowed: {', '.join(sorted(defaults)) or 'none'}",
            )
        for key, value in options.items():
            validate(value, self.option_specs[key], where, f"options.{key}")
        return {**defaults, **options}

    def missing_packages(self, packages: tuple[str, ...] | list[str] = ()) -> list[str]:
        """The import names (the backend's and ``packages``) not installed here.

        Checked without importing anything (:func:`is_installed`): ``packages`` comes
        from a target file, which must never run code.
        """
        return [p for p in (*self.packages, *packages) if not is_installed(p)]

    def unavailable_reason(self, target) -> str | None:
        """Why the target cannot be built and run here; None if it can."""
        missing = self.missing_packages(target.requires.get("packages", []))
        if missing:
            return f"{', '.join(missing)} not installed ({self.install_hint})"
        return None

    def build(self, ctx: BuildContext, target, out_dir: Path) -> BuildResult:
        raise NotImplementedError

    def verify_artifact(self, artifact_dir: Path, manifest: dict) -> None:
        """Check backend-specific manifest fields against the (already hashed) files.

        Called by :func:`edgekit.manifest.read_manifest` after the sha256 check.

        Raises:
            EdgekitError: a field that the hashed files contradict.
        """

    def runtime_unavailable_reason(self, manifest: dict) -> str | None:
        """Why an artifact of this backend cannot be loaded here; None if it can."""
        missing = self.missing_packages()
        if missing:
            return f"{', '.join(missing)} not installed ({self.install_hint})"
        return None

    def load(self, artifact_dir: Path, manifest: dict, threads: int | None) -> Runner:
        raise NotImplementedError


def is_installed(name: str) -> bool:
    """Whether the module ``name`` (``pkg`` or ``pkg.sub``) is installed, without importing it.

    ``importlib.util.find_spec("pkg.sub")`` imports ``pkg`` (runs its code) to find
    ``sub``; here each level is located with the path finder from its parent's
    search locations instead, so a target file naming ``packages = ["this.x"]`` or
    ``["evil.x"]`` runs nothing.

    A folder without ``__init__.py`` is only a namespace package to Python: the
    ``tensorrt/`` folder of ``.pyi`` stubs that ``tensorrt-stubs`` (the dev group)
    installs imports as an empty module, and it is not TensorRT, so namespace
    packages count as not installed.
    """
    parts = name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])  # a top-level name is located, not run
        for part in parts[1:]:
            if spec is None or not spec.submodule_search_locations:
                return False
            locations = list(spec.submodule_search_locations)
            spec = importlib.machinery.PathFinder.find_spec(part, locations)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin not in (None, "namespace")


def onnx_io(onnx_path: Path) -> dict:
    """Input/output names and shapes of an ONNX model, for the manifest."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    inp, out = m.graph.input[0], m.graph.output[0]

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    shape = dims(inp)
    dynamic = isinstance(shape[0], str) or shape[0] == 0
    return {
        "input": inp.name,
        "output": out.name,
        "input_shape": shape,
        "output_shape": dims(out),
        "dtype": "float32",
        "batch": None if dynamic else {"min": shape[0], "max": shape[0]},
    }
