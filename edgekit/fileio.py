"""Safe file writing: temporary path, then an atomic rename into place.

A crash never leaves a half-written file under the final name, and an
existing file is never replaced unless the caller passes ``force=True``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgekit.errors import EdgekitError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """Return ``Path(path)`` or raise :class:`EdgekitError` if it is not a file."""
    p = Path(path)
    if not p.exists():
        raise EdgekitError(f"{what} not found: {p}", "check the path")
    if not p.is_file():
        raise EdgekitError(f"{what} is not a file: {p}")
    return p


def check_writable(path: str | os.PathLike, force: bool) -> Path:
    """Refuse to replace an existing path unless ``force`` is set."""
    p = Path(path)
    if p.exists() and not force:
        raise EdgekitError(f"{p} already exists", "pass --force to overwrite it")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place on success.

    On an exception the temporary file is removed and ``path`` is untouched.

    Raises:
        EdgekitError: ``path`` exists and ``force`` is False.
    """
    final = check_writable(path, force)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files; give them the usual umask mode
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; move it into place on success.

    With ``force`` an existing directory is replaced only after the new one is
    complete, so a failed build leaves the old artifact as it was.
    """
    final = Path(path)
    if final.exists() and not force:
        raise EdgekitError(f"{final} already exists", "pass --force to overwrite it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 directories
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: object, force: bool = True) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path, force=force) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    return Path(path)
