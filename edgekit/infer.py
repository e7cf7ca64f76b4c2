"""On-device inference: the top-k classes of an image or an npz batch, from an artifact alone.

``edgekit infer --artifact DIR --input FILE`` needs only the artifact directory
and the runtime install (NumPy, ONNX Runtime, Pillow): the manifest names the
backend, the input size, the preprocessing (scaling, channel order, mean, std;
:class:`edgekit.preprocess.Preprocess`) and the class names, so no training code,
torchvision or PyTorch is involved, and the inputs are prepared exactly as the
calibration and accuracy passes prepared theirs.

Inputs:

- an image file Pillow can decode (PNG, JPEG, BMP, GIF, WebP, TIFF, PPM). Its
  EXIF orientation is applied; greyscale, palette, CMYK and RGBA images are
  converted to RGB (an alpha channel is dropped), with a note; 16-bit and float
  images are rejected, with the reason. An image of another size than the
  model's is resized (bilinear, aspect ratio not kept: the same resize as the
  ``imagefolder:`` loader), with a note; ``resize=False`` rejects it instead.
- an ``.npz`` with ``x`` uint8 [N, H, W, 3] (or greyscale [N, H, W] /
  [N, H, W, 1]) already at the model's size, and optionally ``y`` int [N]
  labels, which adds the top-1 accuracy to the result.

Probabilities are the softmax of the runner's logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.harness import run_batches

NPZ_SUFFIX = ".npz"
#: Pillow modes that cannot be mapped to 8-bit RGB without choosing a scale.
HIGH_DEPTH_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")


@dataclass
class Inputs:
    """Decoded inputs, before preprocessing.

    Attributes:
        images: uint8 [N, H, W, 3] RGB at the model's input size.
        names: one display name per image (file name, or ``FILE[i]`` for npz rows).
        labels: one ground-truth label per image, None where unknown (images,
            npz files without ``y``).
        notes: what was done to the inputs (conversions, resizes), for the user.
    """

    images: np.ndarray
    names: list[str]
    labels: list[int | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_image(path: str | Path, height: int, width: int, resize: bool = True):
    """Decode one image file to uint8 [height, width, 3] RGB.

    Returns:
        ``(image, notes)``: the array and a list of notes on conversions made.

    Raises:
        EdgekitError: Pillow is missing, the file is not a readable image, it has
            16-bit/float pixels, it is larger than
            :data:`edgekit.data.MAX_IMAGE_SIDE`/:data:`~edgekit.data.MAX_IMAGE_PIXELS`
            (checked from the header, before decoding; Pillow's
            ``DecompressionBombError`` is one error line too), or it has the wrong
            size and ``resize`` is False.
    """
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise EdgekitError(
            "reading images needs Pillow", "pip install 'edgekit-toolchain[runtime]' (or pillow)"
        ) from None
    from edgekit.data import check_image_size

    p = Path(path)
    notes: list[str] = []
    try:
        # Pillow's own "decompression bomb" check would refuse a huge header with its own
        # message (or only warn); edgekit's stricter bound is checked from the header below.
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            im = Image.open(p)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
        with im:
            check_image_size(im.width, im.height, p.name)  # from the header, before decoding
            if getattr(im, "n_frames", 1) > 1:
                notes.append(f"{p.name}: has {im.n_frames} frames; the first is used")
            im.load()
            if im.getexif().get(0x0112, 1) not in (0, 1):  # EXIF Orientation
                im = ImageOps.exif_transpose(im)
                notes.append(f"{p.name}: turned upright by its EXIF orientation")
            mode = im.mode
            if mode in HIGH_DEPTH_MODES:
                raise EdgekitError(
                    f"{p.name} has {mode!r} pixels (16-bit or float); the model takes 8-bit RGB",
                    "save it as an 8-bit PNG or JPEG",
                )
            if mode != "RGB":
                what = "alpha channel dropped" if "A" in mode or "transparency" in im.info else ""
                im = im.convert("RGB")
                notes.append(f"{p.name}: converted {mode} to RGB" + (f" ({what})" if what else ""))
            if im.size != (width, height):
                w0, h0 = im.size
                if not resize:
                    raise EdgekitError(
                        f"{p.name} is {w0}x{h0} (width x height) but the model takes "
                        f"{width}x{height}",
                        "resize it first, or drop --no-resize to let edgekit resize it",
                    )
                im = im.resize((width, height), Image.Resampling.BILINEAR)
                stretched = abs(w0 / h0 - width / height) > 1e-3
                notes.append(
                    f"{p.name}: resized from {w0}x{h0} to {width}x{height} (bilinear"
                    + (", aspect ratio not kept)" if stretched else ")")
                )
            arr = np.asarray(im, dtype=np.uint8)
    except EdgekitError:
        raise
    except FileNotFoundError:
        raise EdgekitError(f"input file not found: {p}") from None
    except (
        Exception
    ) as e:  # PIL.UnidentifiedImageError, OSError (truncated), DecompressionBombError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgekitError(
            f"cannot read {p} as an image: {first}",
            "give a PNG/JPEG image or an .npz with an 'x' array",
        ) from None
    return np.ascontiguousarray(arr), notes


def load_npz_batch(path: str | Path, height: int, width: int) -> Inputs:
    """Read ``x`` (and ``y`` when present) from an npz batch, without pickles.

    Raises:
        EdgekitError: unreadable file, no ``x``, malformed arrays, or images of
            another size than ``height`` x ``width``.
    """
    from edgekit.data import validate_arrays

    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as d:
            if "x" not in d.files:
                raise EdgekitError(
                    f"{p} has no array 'x' (it has {', '.join(d.files) or 'nothing'})",
                    "save the images as 'x' (uint8 [N,H,W,3]) and, optionally, labels as 'y'",
                )
            x = d["x"]
            y = d["y"] if "y" in d.files else None
    except EdgekitError:
        raise
    except Exception as e:  # zipfile.BadZipFile, ValueError (pickled arrays), OSError
        raise EdgekitError(f"cannot read {p} as an npz archive: {e}") from None
    if np.asarray(x).ndim in (3, 4) and len(x) == 0:
        raise EdgekitError(f"{p}: 'x' holds no images")
    x, yv = validate_arrays(
        x, y if y is not None else np.zeros(len(np.atleast_1d(x)), np.int64), str(p)
    )
    if x.shape[1:3] != (height, width):
        raise EdgekitError(
            f"{p}: images are {x.shape[1]}x{x.shape[2]} but the model takes {height}x{width}",
            "resize the batch first (npz inputs are not resized)",
        )
    names = [f"{p.name}[{i}]" for i in range(len(x))]
    return Inputs(x, names, [int(v) for v in yv] if y is not None else [None] * len(x))


def read_inputs(paths, height: int, width: int, resize: bool = True) -> Inputs:
    """Decode image files and npz batches into one uint8 [N, H, W, 3] batch.

    Args:
        paths: image files and/or ``.npz`` files (labels from an npz ``y``).

    Raises:
        EdgekitError: see :func:`load_image` and :func:`load_npz_batch`.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise EdgekitError("no input given", "pass --input FILE (an image or an .npz)")
    images, names, labels, notes = [], [], [], []
    for p in paths:
        if not p.is_file():
            raise EdgekitError(f"input file not found: {p}")
        if p.suffix.lower() == NPZ_SUFFIX:
            b = load_npz_batch(p, height, width)
            images.append(b.images)
            names += b.names
            labels += b.labels
        else:
            img, n = load_image(p, height, width, resize)
            images.append(img[None])
            names.append(p.name)
            labels.append(None)
            notes += n
    return Inputs(np.concatenate(images), names, labels, notes)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of float [N, C] logits (max-subtracted), as float64 [N, C]."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def infer(
    artifact_dir: str | Path,
    inputs,
    top_k: int = 5,
    threads: int | None = None,
    resize: bool = True,
) -> dict:
    """Top-k classes and probabilities of each input image under an artifact.

    Args:
        artifact_dir: a directory with ``manifest.json`` (any backend whose
            runtime is installed here).
        inputs: a path or a list of paths (images and/or ``.npz`` batches).
        top_k: classes per image (clipped to the number of classes).
        threads: intra-op threads of the backend (None: its default).
        resize: resize images of another size (with a note) instead of rejecting them.

    Returns:
        ``{"artifact", "target", "backend", "precision", "input_size": [H, W],
        "notes": [str], "top_k", "images", "predictions": [{"input", "label",
        "label_name", "top": [{"index", "class", "probability"}]}], "top1"}``;
        ``top1``: percent over the images with a label (``"labelled"`` of them),
        None when none has one.

    Raises:
        EdgekitError: ``top_k < 1``; the manifest is missing, invalid or has no
            preprocessing; a bad input (see :func:`read_inputs`); a label beyond the
            artifact's classes; outputs that contradict ``io.output_shape``; the
            backend's runtime is not installed (the message names what to install).
    """
    from edgekit.build import open_artifact
    from edgekit.manifest import read_manifest
    from edgekit.preprocess import Preprocess

    if top_k < 1:
        raise EdgekitError(f"--top-k must be at least 1, got {top_k}")
    d = Path(artifact_dir)
    manifest = read_manifest(d, verify=False)
    if not manifest.get("preprocess"):
        raise EdgekitError(
            f"{d}: the manifest has no preprocessing record, so inputs cannot be prepared",
            "rebuild the artifact with this edgekit version",
        )
    pre = Preprocess.from_dict(manifest["preprocess"])
    paths = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    data = read_inputs(paths, pre.height, pre.width, resize)
    x = pre.apply(data.images)
    runner, manifest = open_artifact(d, threads)  # verifies the files' sha256
    try:
        logits = run_batches(runner, x)
    except EdgekitError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgekitError(f"{manifest['target']} failed while running: {first}") from None
    finally:
        runner.close()
    if logits.ndim != 2 or len(logits) != len(x):
        raise EdgekitError(
            f"{manifest['target']} returned outputs of shape {list(logits.shape)}, "
            f"expected [{len(x)}, classes]"
        )
    n_cls = logits.shape[1]
    declared = manifest["io"]["output_shape"][-1]
    if isinstance(declared, int) and declared != n_cls:
        raise EdgekitError(
            f"{manifest['target']} returned {n_cls} classes but its manifest declares "
            f"io.output_shape [..., {declared}]; the manifest does not belong to this artifact",
            "rebuild the artifact with edgekit build --force",
        )
    beyond = sorted({v for v in data.labels if v is not None and v >= n_cls})
    if beyond:
        raise EdgekitError(
            f"the input labels go up to {beyond[-1]} but {manifest['target']} has {n_cls} "
            "classes, so top-1 cannot be scored",
            "give labels 0..classes-1 (the 'y' of the npz), or drop 'y'",
        )
    probs = softmax(logits)
    classes = manifest.get("classes") or []
    if len(classes) != n_cls:
        classes = [str(i) for i in range(n_cls)]
    k = min(top_k, n_cls)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    preds = []
    for i, name in enumerate(data.names):
        label = data.labels[i]
        preds.append(
            {
                "input": name,
                "label": label,
                "label_name": classes[label] if label is not None and label < n_cls else None,
                "top": [
                    {"index": int(j), "class": classes[j], "probability": float(probs[i, j])}
                    for j in order[i]
                ],
            }
        )
    known = [i for i, v in enumerate(data.labels) if v is not None]
    top1 = float(np.mean([order[i, 0] == data.labels[i] for i in known]) * 100) if known else None
    return {
        "artifact": str(d),
        "target": manifest["target"],
        "backend": manifest["backend"],
        "precision": manifest.get("precision"),
        "input_size": [pre.height, pre.width],
        "notes": data.notes,
        "top_k": k,
        "images": len(preds),
        "predictions": preds,
        "top1": top1,
        "labelled": len(known),
    }
