"""Datasets chosen by name, held as uint8 image arrays, and the class-balanced sampler.

Every dataset is a pair of :class:`Split` s of uint8 [N, H, W, 3] RGB images and
int64 [N] labels, so the same NumPy code prepares calibration batches, accuracy
passes and on-device evaluation. Only the ``npz:`` loader is available in the
runtime install; the others import torchvision or scikit-learn when called.

Names (``--dataset``):

- ``digits``: scikit-learn's bundled handwritten digits (1,797 real 8x8 images),
  bilinearly resized to 32x32 RGB, with a fixed stratified 75/25 split (seed 0).
  The embedded default; no download.
- ``cifar10`` / ``cifar100``: torchvision datasets; downloaded into ``data_dir``
  where the network allows, or read from an existing copy there.
- ``npz:DIR`` (files named ``*train*.npz`` and ``*test*.npz`` in DIR),
  ``npz:TRAIN.npz,TEST.npz`` or ``npz:TEST.npz`` (test split only): arrays
  ``x`` uint8 [N, H, W, 3] (or [N, H, W] / [N, H, W, 1] greyscale) and ``y`` int [N],
  optionally ``classes`` (str [C]).
- ``imagefolder:DIR``: torchvision ``ImageFolder`` layout with ``DIR/train`` and
  ``DIR/test`` (or ``DIR/val``), decoded and resized to ``image_size`` in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

DATASET_NAMES = ("digits", "cifar10", "cifar100", "npz:PATH", "imagefolder:PATH")
#: Largest image decoded from a file: each side at most MAX_IMAGE_SIDE pixels and at most
#: MAX_IMAGE_PIXELS in all (below Pillow's own 89 MP "decompression bomb" warning). Checked
#: from the header, before the pixels are decoded, so a bomb never allocates its buffer.
MAX_IMAGE_SIDE = 10_000
MAX_IMAGE_PIXELS = 50_000_000
#: Pillow modes that cannot be mapped to 8-bit RGB without choosing a scale.
HIGH_DEPTH_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")
#: Largest class label a dataset may hold (as :data:`edgekit.models.MAX_CLASSES`): a label
#: of 2**62 would otherwise make edgekit list 2**62 class names and exhaust the memory.
MAX_LABEL = 100_000 - 1


def check_image_size(width: int, height: int, where: str) -> None:
    """Refuse an image above :data:`MAX_IMAGE_SIDE` / :data:`MAX_IMAGE_PIXELS` (from its header).

    Raises:
        EdgekitError: naming ``where`` and the size.
    """
    if max(width, height) > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
        raise EdgekitError(
            f"{where} is {width}x{height} pixels, above the limit of {MAX_IMAGE_SIDE} per side "
            f"and {MAX_IMAGE_PIXELS // 1_000_000} megapixels",
            "downscale it first",
        )


@dataclass
class Split:
    """One split: ``x`` uint8 [N, H, W, 3] RGB, ``y`` int64 [N]."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> Split:
        return Split(self.x[idx], self.y[idx])


@dataclass
class Dataset:
    """A named dataset with its splits and defaults.

    Attributes:
        name: the spec it was loaded from.
        train: the training split, or None for a test-only npz.
        test: the test split (accuracy is always measured on all of it).
        classes: class names, index = label.
        normalization: the default normalization name or ``(mean, std)``.
        hflip: whether horizontal flips are a valid augmentation (not for digits).
    """

    name: str
    train: Split | None
    test: Split
    classes: list[str]
    normalization: str | tuple = "imagenet"
    hflip: bool = True
    source: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.test.x.shape[1:3])

    def split(self, name: str) -> Split:
        """Return ``"train"`` or ``"test"``.

        Raises:
            EdgekitError: the split is absent (a test-only npz has no train split).
        """
        s = {"train": self.train, "test": self.test}.get(name)
        if s is None:
            raise EdgekitError(
                f"dataset {self.name!r} has no {name!r} split",
                "give both files, e.g. npz:TRAIN.npz,TEST.npz",
            )
        return s


def load_dataset(
    spec: str, data_dir: str | Path | None = None, image_size: int = 32, download: bool = True
) -> Dataset:
    """Load a dataset by name (see the module docstring for the names).

    Args:
        spec: ``digits``, ``cifar10``, ``cifar100``, ``npz:...`` or ``imagefolder:...``.
        data_dir: where torchvision datasets live or are downloaded to
            (default ``~/.cache/edgekit/data``).
        image_size: the side length ImageFolder images are resized to.
        download: allow torchvision to download a missing dataset.

    Raises:
        EdgekitError: unknown name, missing files, malformed arrays, or a
            download that failed.
    """
    if spec == "digits":
        return _digits()
    if spec in ("cifar10", "cifar100"):
        return _torchvision_cifar(spec, data_dir, download)
    if spec.startswith("npz:"):
        return _npz(spec[4:])
    if spec.startswith("imagefolder:"):
        return _imagefolder(spec[len("imagefolder:") :], image_size)
    raise EdgekitError(f"unknown dataset {spec!r}", f"use one of: {', '.join(DATASET_NAMES)}")


def absolute_dataset(spec: str) -> str:
    """``spec`` with the paths of ``npz:``/``imagefolder:`` made absolute (others unchanged).

    A work directory records its dataset this way, so that ``bench -w DIR`` works
    from any directory, not only the one ``export`` ran in.
    """
    for prefix in ("npz:", "imagefolder:"):
        if spec.startswith(prefix) and spec[len(prefix) :]:
            parts = spec[len(prefix) :].split(",") if prefix == "npz:" else [spec[len(prefix) :]]
            return prefix + ",".join(str(Path(a).expanduser().absolute()) for a in parts)
    return spec


# --- the class-balanced sampler -------------------------------------------------------


def balanced_indices(
    y: np.ndarray,
    per_class: int,
    seed: int = 0,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
) -> np.ndarray:
    """Draw ``per_class`` indices of every class, without replacement, reproducibly.

    Args:
        y: int [N] labels.
        per_class: images per class (k >= 1).
        seed: seed of ``numpy.random.default_rng``; the same seed gives the same draw.
        num_classes: classes expected (default ``y.max() + 1``); a class with no
            images then counts as having too few.
        class_names: used in the error message only.

    Returns:
        int64 [per_class * num_classes] indices, grouped by class in label order.

    Raises:
        EdgekitError: ``per_class < 1`` or a class has fewer than ``per_class`` images.
    """
    y = np.asarray(y)
    if per_class < 1:
        raise EdgekitError(f"images per class must be at least 1, got {per_class}")
    n_cls = int(num_classes if num_classes is not None else y.max() + 1)
    rng = np.random.default_rng(seed)
    out = []
    for c in range(n_cls):
        idx = np.flatnonzero(y == c)
        if len(idx) < per_class:
            label = f"{c} ({class_names[c]!r})" if class_names else str(c)
            raise EdgekitError(
                f"class {label} has {len(idx)} images, fewer than the {per_class} per class asked for",
                "ask for fewer images per class or use a larger split",
            )
        out.append(np.sort(rng.choice(idx, size=per_class, replace=False)))
    return np.concatenate(out).astype(np.int64)


def min_images_for_drop(max_drop: float) -> int:
    """Smallest evaluation set on which one image is at most ``max_drop`` points of top-1.

    One image is ``100 / n`` points, so measuring a drop of 0.1 point needs n >= 1,000.

    Raises:
        EdgekitError: ``max_drop`` not in (0, 100].
    """
    if not (isinstance(max_drop, (int, float)) and 0 < max_drop <= 100):
        raise EdgekitError(f"a top-1 drop must be in (0, 100] points, got {max_drop!r}")
    return int(math.ceil(100.0 / max_drop - 1e-9))


def heldout_indices(
    y: np.ndarray,
    images: int,
    exclude: np.ndarray | None = None,
    seed: int = 0,
    num_classes: int | None = None,
) -> np.ndarray:
    """A class-balanced held-out slice of a split, disjoint from ``exclude``.

    Used to choose among quantization candidates (calibration ``auto``, accuracy-aware
    fallback) on training images that were not used to calibrate, so that the test
    split is never used to take a decision. Classes get ``images // C`` each and the
    remainder goes to the first classes; the draw is reproducible for a seed.

    Args:
        y: int [N] labels of the split (normally train).
        images: total images in the slice (>= number of classes).
        exclude: int indices that must not be drawn (the calibration images).
        seed: seed of ``numpy.random.default_rng`` (offset from the calibration seed's
            stream, so the same seed gives independent draws).

    Returns:
        int64 [images] indices, grouped by class in label order.

    Raises:
        EdgekitError: fewer images than classes, or a class without enough unused images.
    """
    y = np.asarray(y)
    n_cls = int(num_classes if num_classes is not None else y.max() + 1)
    if images < n_cls:
        raise EdgekitError(
            f"a held-out slice of {images} images cannot hold one image of each of {n_cls} classes",
            f"ask for at least {n_cls} images",
        )
    taken = np.zeros(len(y), dtype=bool)
    if exclude is not None and len(exclude):
        taken[np.asarray(exclude, dtype=np.int64)] = True
    rng = np.random.default_rng([seed, 0x5EED])
    base, extra = divmod(images, n_cls)
    out = []
    for c in range(n_cls):
        want = base + (1 if c < extra else 0)
        idx = np.flatnonzero((y == c) & ~taken)
        if len(idx) < want:
            raise EdgekitError(
                f"class {c} has {len(idx)} training images not used for calibration; "
                f"a held-out slice of {images} images needs {want} of each class",
                "use a smaller slice, fewer calibration images, or a larger training split",
            )
        out.append(np.sort(rng.choice(idx, size=want, replace=False)))
    return np.concatenate(out).astype(np.int64)


# --- loaders ---------------------------------------------------------------------------


def validate_arrays(x: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Check and normalise image/label arrays to uint8 [N,H,W,3] and int64 [N].

    Raises:
        EdgekitError: naming ``where`` and the offending shape or dtype, no
            images at all (N = 0, or an empty height or width), or a label that is
            negative or above :data:`MAX_LABEL`.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise EdgekitError(
            f"{where}: 'x' has shape {list(x.shape)}, expected [N, H, W, 3] (or greyscale [N, H, W])",
            "store images channels-last",
        )
    if x.dtype != np.uint8:
        raise EdgekitError(f"{where}: 'x' has dtype {x.dtype}, expected uint8 pixel values 0..255")
    if len(x) == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        raise EdgekitError(
            f"{where}: 'x' holds no images (shape {list(x.shape)})",
            "give at least one image of at least 1x1 pixels",
        )
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if y.ndim != 1 or len(y) != len(x):
        raise EdgekitError(
            f"{where}: 'y' has shape {list(y.shape)}, expected [{len(x)}] (one label per image)"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise EdgekitError(f"{where}: 'y' has dtype {y.dtype}, expected integer class labels")
    if len(y) and y.min() < 0:
        raise EdgekitError(f"{where}: 'y' has negative labels")
    if len(y) and y.max() > MAX_LABEL:
        raise EdgekitError(
            f"{where}: 'y' has a label of {y.max()}, above the limit of {MAX_LABEL}",
            "labels must be class indices 0..C-1",
        )
    return x, y.astype(np.int64)


def read_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Read ``x``, ``y`` and optional ``classes`` from an npz, without pickles.

    Raises:
        EdgekitError: missing file, unreadable file, or missing/malformed arrays.
    """
    p = Path(path)
    if not p.is_file():
        raise EdgekitError(f"npz file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as d:
            missing = [k for k in ("x", "y") if k not in d.files]
            if missing:
                raise EdgekitError(
                    f"{p} has no array {' or '.join(repr(m) for m in missing)} "
                    f"(it has {', '.join(d.files) or 'nothing'})",
                    "save images as 'x' (uint8 [N,H,W,3]) and labels as 'y' (int [N])",
                )
            x, y = d["x"], d["y"]
            classes = [str(c) for c in d["classes"]] if "classes" in d.files else None
    except EdgekitError:
        raise
    except Exception as e:  # zipfile.BadZipFile, ValueError (pickled arrays), OSError
        raise EdgekitError(f"cannot read {p} as an npz archive: {e}") from None
    x, y = validate_arrays(x, y, str(p))
    return x, y, classes


def _npz(arg: str) -> Dataset:
    if not arg:
        raise EdgekitError(
            "npz: needs a path", "use npz:DIR, npz:TRAIN.npz,TEST.npz or npz:TEST.npz"
        )
    parts = [Path(a) for a in arg.split(",")]
    if len(parts) == 1 and parts[0].is_dir():
        d = parts[0]
        train = sorted(d.glob("*train*.npz"))
        test = sorted(d.glob("*test*.npz"))
        if len(train) != 1 or len(test) != 1:
            raise EdgekitError(
                f"{d} must hold exactly one *train*.npz and one *test*.npz "
                f"(found {len(train)} and {len(test)})",
                "name the files explicitly: npz:TRAIN.npz,TEST.npz",
            )
        parts = [train[0], test[0]]
    if len(parts) > 2:
        raise EdgekitError(f"npz: takes at most two files, got {len(parts)}")
    if len(parts) == 1:
        tx, ty, classes = read_npz(parts[0])
        train = None
    else:
        x, y, classes = read_npz(parts[0])
        tx, ty, classes_t = read_npz(parts[1])
        classes = classes or classes_t
        if x.shape[1:] != tx.shape[1:]:
            raise EdgekitError(
                f"train images are {list(x.shape[1:])} but test images are {list(tx.shape[1:])}"
            )
        train = Split(x, y)
    n_cls = int(max(ty.max(), train.y.max() if train else 0)) + 1
    if classes is None:
        classes = [str(i) for i in range(n_cls)]
    elif len(classes) < n_cls:
        raise EdgekitError(
            f"labels go up to {n_cls - 1} but only {len(classes)} class names are given"
        )
    return Dataset(
        name=f"npz:{arg}",
        train=train,
        test=Split(tx, ty),
        classes=classes,
        normalization="imagenet",
        hflip=True,
        source={"files": [str(p) for p in parts]},
    )


def _resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of uint8 [N, h, w] or [N, h, w, 3] to ``size`` (Pillow)."""
    from PIL import Image

    return np.stack(
        [np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images]
    )


def _digits() -> Dataset:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise EdgekitError(
            "the digits dataset needs scikit-learn",
            "install the build extra: pip install 'edgekit-toolchain[build]'",
        ) from None
    d = load_digits()
    img = np.clip(d.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)  # [1797, 8, 8]
    img = _resize_uint8(img, 32)
    x = np.repeat(img[..., None], 3, axis=-1)
    y = d.target.astype(np.int64)
    itr, ite = train_test_split(np.arange(len(y)), test_size=0.25, random_state=0, stratify=y)
    return Dataset(
        name="digits",
        train=Split(x[itr], y[itr]),
        test=Split(x[ite], y[ite]),
        classes=[str(i) for i in range(10)],
        normalization="half",
        hflip=False,
        source={"origin": "sklearn.datasets.load_digits", "split_seed": 0},
    )


def default_data_dir() -> Path:
    return Path.home() / ".cache" / "edgekit" / "data"


def _torchvision_cifar(name: str, data_dir, download: bool) -> Dataset:
    try:
        from torchvision import datasets
    except ImportError:
        raise EdgekitError(
            f"{name} needs torchvision", "install the build extra, or use an npz copy: npz:DIR"
        ) from None
    root = Path(data_dir) if data_dir else default_data_dir()
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        tr = cls(str(root), train=True, download=download)
        te = cls(str(root), train=False, download=download)
    except Exception as e:  # RuntimeError (not found), URLError (no network)
        raise EdgekitError(
            f"cannot load {name} from {root}: {e}",
            "point --data-dir at an existing copy, or use npz:DIR",
        ) from None
    return Dataset(
        name=name,
        train=Split(np.asarray(tr.data, np.uint8), np.asarray(tr.targets, np.int64)),
        test=Split(np.asarray(te.data, np.uint8), np.asarray(te.targets, np.int64)),
        classes=list(tr.classes),
        normalization=name,
        hflip=True,
        source={"root": str(root)},
    )


def _imagefolder(arg: str, image_size: int) -> Dataset:
    root = Path(arg)
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise EdgekitError(f"{root} must hold train/ and test/ (or val/) folders of class folders")
    try:
        from torchvision.datasets import ImageFolder
    except ImportError:
        raise EdgekitError("imagefolder needs torchvision", "install the build extra") from None

    def load(d: Path) -> tuple[Split, list[str]]:
        from PIL import Image

        try:
            ds = ImageFolder(str(d))
        except (FileNotFoundError, OSError) as e:  # no class folder / no image in one
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise EdgekitError(
                f"{d} is not a folder of class folders of images: {first}"[:300],
                "lay it out as DIR/train/CLASS/*.png and DIR/test/CLASS/*.png",
            ) from None
        xs = []
        for path, _ in ds.samples:
            if not Path(path).is_file():  # a FIFO would block the open forever
                raise EdgekitError(
                    f"{path} is not a regular file",
                    "remove it (only image files belong in the class folders)",
                )
            try:
                with Image.open(path) as im:
                    check_image_size(im.width, im.height, str(path))
                    if im.mode in HIGH_DEPTH_MODES:  # convert("RGB") would clip them silently
                        raise EdgekitError(
                            f"{path} has {im.mode!r} pixels (16-bit or float); edgekit reads "
                            "8-bit images",
                            "save it as an 8-bit PNG or JPEG",
                        )
                    xs.append(
                        np.asarray(
                            im.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                        )
                    )
            except EdgekitError:
                raise
            except Exception as e:  # UnidentifiedImageError, truncated file, decompression bomb
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise EdgekitError(
                    f"cannot read {path} as an image: {first}"[:400],
                    "remove or replace that file (only images belong in the class folders)",
                ) from None
        if not xs:
            raise EdgekitError(f"{d} holds no images")
        return Split(np.stack(xs), np.asarray(ds.targets, np.int64)), ds.classes

    train, classes = load(root / "train")
    test, classes_t = load(test_dir)
    if classes != classes_t:
        raise EdgekitError(f"train and {test_dir.name} have different class folders")
    return Dataset(
        name=f"imagefolder:{arg}",
        train=train,
        test=test,
        classes=classes,
        normalization="imagenet",
        hflip=True,
        source={"root": str(root)},
    )
