"""Safe file writing: temporary path, then an atomic rename into place.

A crash never leaves a half-written file under the final name, and an
existing file is never replaced unless the caller passes ``force=True``.

This module is also edgekit's trust boundary on the file system:

- :func:`contained` joins a name (a target name, a manifest entry) to a root and
  refuses any result outside that root (``..``, absolute paths, symbolic links
  leading out);
- :func:`remove_tree` deletes only inside a given root and never follows a link;
- every write goes through :func:`fs_errors` (used by :func:`atomic_path`,
  :func:`atomic_dir` and :func:`write_json`), which turns a file-system fault
  (read-only file system, no space left, permission denied) into one
  :class:`EdgekitError` naming the path, and leaves no temporary file behind;
- :func:`workdir_lock` is the advisory lock (``fcntl.flock``) that keeps two
  edgekit processes from writing into one work directory at the same time;
- :func:`clean_stale_parts` removes ``.*.part`` leftovers of a killed process.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from edgekit.errors import EdgekitError

#: errno -> (reason, hint) of the file-system faults turned into one error line.
FS_FAULTS = {
    errno.EROFS: ("read-only file system", "write to a writable directory"),
    errno.ENOSPC: ("no space left on device", "free some disk space or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write elsewhere"),
    errno.EACCES: ("permission denied", "check the permissions, or write elsewhere"),
    errno.EPERM: ("operation not permitted", "check the permissions, or write elsewhere"),
    errno.EFBIG: ("file too large for this file system", "write elsewhere"),
    errno.ENAMETOOLONG: ("file name too long", "use a shorter path"),
    errno.ELOOP: ("too many levels of symbolic links", "check the links on the path"),
}
#: errno of path mistakes (a file where a directory is expected, ...): one error line when the
#: ``OSError`` names its file (:func:`edgekit.cli.main`), never a traceback.
PATH_ERRORS = {errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY}

#: Name of the lock file inside a work directory (see :func:`workdir_lock`).
LOCK_NAME = ".edgekit.lock"


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
    if (p.exists() or p.is_symlink()) and not force:
        raise EdgekitError(f"{p} already exists", "pass --force to overwrite it")
    return p


# ---------------------------------------------------------------------------
# Containment
# ---------------------------------------------------------------------------


def contained(
    root: str | os.PathLike,
    name: str | os.PathLike,
    what: str = "name",
    component: bool = False,
    within: str | os.PathLike | None = None,
) -> Path:
    """``root / name``, refused unless it resolves to a path strictly inside ``root``.

    Args:
        root: the directory the result must stay in (it need not exist yet).
        name: a relative path (a manifest entry) or, with ``component``, a single
            name (a target name) that must not contain a path separator.
        what: what ``name`` is, for the error message ("target name", ...).
        component: require one path component that does not start with ``.``
            (names starting with a dot are edgekit's temporary ``.*.part`` files).
        within: an outer directory (the work directory) the result must stay in
            too, so a ``root`` that is itself a symbolic link leading out of
            ``within`` (``WORK/artifacts -> /elsewhere``) is refused.

    Returns:
        ``Path(root) / name`` (not resolved, so messages show the user's paths).

    Raises:
        EdgekitError: ``name`` is empty, absolute, holds a NUL byte, climbs out with
            ``..``, or leads out through a symbolic link.
    """
    s = os.fspath(name)
    hint = (
        "use a plain name like ort-cpu (letters, digits, '.', '_', '-')"
        if component
        else f"use a relative path inside {root}"
    )
    if not isinstance(s, str) or not s or "\x00" in s:
        raise EdgekitError(f"{what} {s!r} is not a valid name", hint)
    if component and ("/" in s or "\\" in s or s.startswith(".")):
        raise EdgekitError(f"{what} {s!r} is not a plain name", hint)
    rel = Path(s)
    root_p = Path(root)
    if rel.is_absolute():
        raise EdgekitError(f"{what} {s!r} is an absolute path, outside {root_p}", hint)
    base = root_p.resolve()
    full = (base / rel).resolve()
    if full == base or base not in full.parents:
        if (root_p / rel).is_symlink():
            raise EdgekitError(
                f"{root_p / rel} is a symbolic link to {full}, outside {root_p}",
                "remove the link; edgekit writes only inside the work directory",
            )
        raise EdgekitError(f"{what} {s!r} leads outside {root_p}", hint)
    if within is not None:
        outer = Path(within).resolve()
        if outer not in full.parents:
            raise EdgekitError(
                f"{root_p / rel} resolves to {full}, outside {within} (a symbolic link?)",
                "remove the link; edgekit writes only inside the work directory",
            )
    return root_p / rel


def remove_tree(path: str | os.PathLike, root: str | os.PathLike) -> None:
    """Delete ``path`` (a directory tree or a file) only if it lies inside ``root``.

    A symbolic link is removed itself; its target is never touched.

    Raises:
        EdgekitError: ``path`` is not inside ``root`` (a bug or a crafted name), or
            a file-system fault.
    """
    p = Path(path)
    base = Path(root).resolve()
    parent = p.parent.resolve()
    if parent != base and base not in parent.parents:
        raise EdgekitError(f"refusing to delete {p}: it is outside {root}")
    with fs_errors(p, "delete"):
        if p.is_symlink() or p.is_file():
            p.unlink(missing_ok=True)
        elif p.is_dir():
            shutil.rmtree(p)


# ---------------------------------------------------------------------------
# File-system faults
# ---------------------------------------------------------------------------


def fs_fault(exc: BaseException) -> OSError | None:
    """The file-system fault (an ``OSError`` of :data:`FS_FAULTS`) in ``exc``'s chain, if any."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in FS_FAULTS:
            return e
        e = e.__cause__ or e.__context__
    return None


def fs_error(exc: OSError, path: str | os.PathLike, action: str = "write") -> EdgekitError:
    """One :class:`EdgekitError` for an ``OSError`` on ``path``: the path and the reason."""
    reason, hint = FS_FAULTS.get(exc.errno, (exc.strerror or str(exc), "check the path"))
    return EdgekitError(f"cannot {action} {path}: {reason}", hint)


@contextlib.contextmanager
def fs_errors(
    path: str | os.PathLike, action: str = "write", only_faults: bool = False
) -> Iterator[None]:
    """Turn an ``OSError`` (or a file-system fault wrapped by a library) into one error line.

    An ``OSError`` raised directly in the block becomes an :class:`EdgekitError`
    naming ``path`` (with ``only_faults``, only one of :data:`FS_FAULTS`); another
    exception is converted only when its cause chain holds a fault of
    :data:`FS_FAULTS` (e.g. ``torch.save`` wrapping ``ENOSPC`` in a RuntimeError).
    """
    try:
        yield
    except EdgekitError:
        raise
    except OSError as e:
        if only_faults and e.errno not in FS_FAULTS:
            raise
        raise fs_error(e, path, action) from None
    except Exception as e:
        fault = fs_fault(e)
        if fault is None:
            raise
        raise fs_error(fault, path, action) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place on success.

    On an exception the temporary file is removed and ``path`` is untouched.

    Raises:
        EdgekitError: ``path`` exists and ``force`` is False; a file-system fault
            (read-only, no space, permission) while writing, naming ``path``.
    """
    final = check_writable(path, force)
    tmp_path: Path | None = None
    try:
        with fs_errors(final):
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
            os.close(fd)
            tmp_path = Path(tmp)
        with fs_errors(final, only_faults=True):
            yield tmp_path
        with fs_errors(final):
            if tmp_path.exists():  # mkstemp makes 0600 files; give them the usual umask mode
                os.chmod(tmp_path, 0o666 & ~_umask())
            os.replace(tmp_path, final)
    finally:
        if tmp_path is not None:
            with contextlib.suppress(OSError):
                tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; move it into place on success.

    With ``force`` an existing directory is replaced only after the new one is
    complete, so a failed build leaves the old artifact as it was.

    Raises:
        EdgekitError: ``path`` exists and ``force`` is False; a file-system fault
            while writing, naming ``path`` (no temporary directory is left).
    """
    final = Path(path)
    if (final.exists() or final.is_symlink()) and not force:
        raise EdgekitError(f"{final} already exists", "pass --force to overwrite it")
    tmp: Path | None = None
    try:
        with fs_errors(final):
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent))
        with fs_errors(final, only_faults=True):
            yield tmp
        with fs_errors(final):
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 directories
            if final.exists() or final.is_symlink():
                old = final.with_name(f".{final.name}.old")
                if old.exists() or old.is_symlink():
                    remove_tree(old, final.parent)
                os.replace(final, old)
                try:
                    os.replace(tmp, final)
                except BaseException:
                    os.replace(old, final)  # put the old artifact back
                    raise
                with contextlib.suppress(EdgekitError):
                    remove_tree(old, final.parent)
            else:
                os.replace(tmp, final)
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: object, force: bool = True) -> Path:
    """Write ``obj`` as indented JSON, atomically.

    Raises:
        EdgekitError: ``path`` exists and ``force`` is False, or a file-system fault.
    """
    with atomic_path(path, force=force) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    return Path(path)


# ---------------------------------------------------------------------------
# Stale temporary files and the work-directory lock
# ---------------------------------------------------------------------------


def process_start_time() -> float:
    """This process's start time (seconds since the epoch; Linux /proc, else import time)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORT_TIME


_IMPORT_TIME = time.time()


def is_part_name(name: str) -> bool:
    """Whether ``name`` is one of edgekit's temporary names (``.NAME.XXXX.part``)."""
    return name.startswith(".") and name.endswith(".part") and len(name) > len("..part")


def clean_stale_parts(*dirs: str | os.PathLike, before: float | None = None) -> list[Path]:
    """Remove edgekit's ``.*.part`` leftovers of a killed process in ``dirs`` (not recursive).

    Only entries last modified before ``before`` (default: this process's start)
    are removed, so a temporary file of a process still writing is left alone.
    Symbolic links are unlinked, never followed. Returns what was removed.
    """
    cutoff = process_start_time() if before is None else before
    removed = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir() or d.is_symlink():
            continue
        for p in d.iterdir():
            if not is_part_name(p.name):
                continue
            try:
                if p.lstat().st_mtime >= cutoff:
                    continue
                remove_tree(p, d)
                removed.append(p)
            except (OSError, EdgekitError):
                continue  # best effort: a leftover is harmless, a crash here is not
    return removed


_HELD: dict[str, tuple[int, int]] = {}  # resolved work dir -> (fd, depth)


@contextlib.contextmanager
def workdir_lock(root: str | os.PathLike) -> Iterator[None]:
    """Hold the advisory lock of a work directory (``fcntl.flock`` on ``ROOT/.edgekit.lock``).

    Non-blocking: a second edgekit process on the same directory fails at once.
    Re-entrant within one process (``run`` locks, then calls ``prepare``, which
    locks too). The directory is created when missing, and removed again on exit
    when nothing but the lock file was written into it. Where ``fcntl`` does not
    exist (Windows), no lock is taken.

    Raises:
        EdgekitError: another process holds the lock (its pid is named), ``root``
            is not a directory, or a file-system fault creating the lock file.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    root_p = Path(root)
    if root_p.exists() and not root_p.is_dir():
        raise EdgekitError(f"{root_p} exists and is not a directory", "choose another --work-dir")
    created = not root_p.exists()
    with fs_errors(root_p):
        root_p.mkdir(parents=True, exist_ok=True)
    key = str(root_p.resolve())
    if key in _HELD:
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth - 1)
        return
    lock = root_p / LOCK_NAME
    with fs_errors(lock):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise EdgekitError(
                f"{root_p} is in use by another edgekit process (pid {pid})",
                "wait for it or use another --work-dir",
            ) from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = (fd, 1)
        try:
            yield
        finally:
            _HELD.pop(key, None)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                if created and os.listdir(root_p) == [LOCK_NAME]:
                    lock.unlink()  # nothing was written: leave no empty work directory
                    root_p.rmdir()
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
