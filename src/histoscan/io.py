"""Safe output: the one way every histoscan command writes a file or a folder.

Three promises, kept here so that no writer has to remember them:

* **Atomic.** A file or folder is built beside its target under a hidden name
  (``.NAME.partial-<pid>-<random>``) and renamed into place only when complete, so an interrupted
  command never leaves something that looks finished; an existing target is replaced only once
  the new one is whole. SIGTERM and Ctrl-C remove the partial copy; after ``kill -9`` (which
  nothing can catch) the next write to the same target removes the leftovers of dead processes.
* **Overwrite policy.** ``--overwrite`` replaces only a folder that histoscan made: every folder
  written through :func:`atomic_dir` holds a marker file, ``.histoscan``. A folder without it (a
  user's own folder, a data folder), the input of the command, or any folder containing that
  input is never replaced or deleted. :func:`prepare_out_dir` applies the policy; ``atomic_dir``
  calls it.
* **Clear errors.** A full disk, a read-only folder, an output path that is a file: one
  :class:`OutputError` line (a ``HistoscanError``) naming the path, never a traceback or a
  half-written file.

Use::

    from histoscan.io import atomic_dir, atomic_file, atomic_write

    with atomic_dir(out, overwrite=overwrite, inputs=[data_path]) as tmp:
        (tmp / "metrics.json").write_text(...)      # everything goes into tmp
    # here ``out`` is complete, with its .histoscan marker

    with atomic_file(path) as tmp:                  # one file: write to tmp, renamed on success
        torch.save(obj, tmp)
    atomic_write(path, "text or bytes")

Large writers call :func:`ensure_free_space` (or :func:`preallocate`, which also makes a
memory-mapped file safe from SIGBUS on a full disk) before they start.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from histoscan.errors import HistoscanError

MARKER = ".histoscan"
PARTIAL_RE = re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)-[^.]+(?P<file>\.tmp)?$")
# folders histoscan wrote before the marker existed are recognised by their own metadata
_LEGACY_FORMATS = {"store.json": "histoscan-store/"}
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_ACCESS_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


class OutputError(HistoscanError):
    """An output that cannot or may not be written (exists, full disk, no rights)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def made_by_histoscan(folder: str | Path) -> bool:
    """True when ``folder`` holds histoscan's marker (or is a store written before markers)."""
    folder = Path(folder)
    if (folder / MARKER).is_file():
        return True
    for name, prefix in _LEGACY_FORMATS.items():
        try:
            meta = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and str(meta.get("format", "")).startswith(prefix):
            return True
    return False


def write_marker(folder: str | Path, what: str = "") -> None:
    """Mark ``folder`` as made by histoscan (so ``--overwrite`` may replace it later)."""
    from histoscan import __version__

    info = {"made_by": "histoscan", "version": __version__, "what": what}
    info["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    (Path(folder) / MARKER).write_text(json.dumps(info) + "\n")


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def prepare_out_dir(
    out: str | Path, overwrite: bool = False, inputs: Iterable[str | Path | None] = ()
) -> Path:
    """Check that a command may write the folder ``out``; raise OutputError otherwise.

    Refused: ``out`` is an input or contains one; ``out`` is a file; ``out`` exists and
    ``overwrite`` is off; ``out`` exists, is not empty and histoscan did not make it. Stale
    partial copies of ``out`` left by killed processes are removed.

    Returns:
        ``out`` as given (a Path).
    """
    out = Path(out)
    resolved = out.resolve()
    for item in inputs:
        if item is None:
            continue
        src = Path(item).resolve()
        if _is_within(src, resolved):
            what = "is the input" if src == resolved else f"contains the input {item}"
            raise OutputError(f"{out}: {what}; choose an output folder outside the input")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise OutputError(f"{out}: exists and is not a folder; choose a folder path")
        if not overwrite:
            raise OutputError(f"{out}: already exists (use --overwrite to replace it)")
        if any(out.iterdir()) and not made_by_histoscan(out):
            raise OutputError(
                f"{out}: not made by histoscan (no {MARKER} marker), so --overwrite will not "
                "delete it; choose another folder or remove it yourself"
            )
    _check_parent(out)
    remove_stale_partials(out)
    return out


def _check_parent(target: Path) -> None:
    parent = target.parent
    for folder in (parent, *parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise OutputError(f"{target}: {folder} is a file, not a folder")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise OutputError(f"{target}: cannot write in {folder} (permission denied)")
            return


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_partials(target: str | Path) -> list[Path]:
    """Remove ``.NAME.partial-<pid>-*`` leftovers of ``target`` whose process is gone."""
    target = Path(target)
    removed = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = PARTIAL_RE.match(entry.name)
        if not match or match["name"] != target.name or _pid_alive(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def output_error(target: str | Path, exc: OSError) -> OutputError:
    """An OSError while writing ``target`` as one line that says what to do."""
    if exc.errno in _DISK_ERRNOS:
        return OutputError(f"{target}: disk full ({exc.strerror}); free space or write elsewhere")
    if exc.errno in _ACCESS_ERRNOS:
        return OutputError(f"{target}: cannot write ({exc.strerror}); check the folder's rights")
    return OutputError(f"{target}: cannot write ({exc.strerror or exc})")


@contextmanager
def _cleanup_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so ``finally`` blocks remove partial output."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            current = signal.getsignal(sig)
            if current in (signal.SIG_DFL, None):
                previous[sig] = signal.signal(sig, interrupt)
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _partial_name(target: Path) -> str:
    return f".{target.name}.partial-{os.getpid()}-"


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it becomes ``path`` (mode per umask).

    An existing file is replaced; an existing folder at ``path`` is an error.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name")
    _check_parent(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(path)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=_partial_name(path), suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise output_error(path, exc) from exc
    tmp = Path(name)
    try:
        with _cleanup_on_signals():
            try:
                yield tmp
                tmp.chmod(0o666 & ~_umask())  # mkstemp makes it private; the result is ordinary
                os.replace(tmp, path)
            except OSError as exc:
                raise output_error(path, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write bytes or text to ``path`` atomically."""
    with atomic_file(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)


@contextmanager
def atomic_dir(
    out: str | Path,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
    what: str = "",
) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out``.

    Args:
        out: the folder to create.
        overwrite: replace an existing ``out`` (only one histoscan made; see the module doc).
        inputs: paths the command reads; ``out`` may not be one of them or contain one.
        what: a word for the marker file (``store``, ``audit``, ...).
    """
    out = prepare_out_dir(out, overwrite, inputs)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=_partial_name(out)))
    except OSError as exc:
        raise output_error(out, exc) from exc
    try:
        with _cleanup_on_signals():
            try:
                yield tmp
                write_marker(tmp, what)
                tmp.chmod(0o777 & ~_umask())
                _replace_dir(tmp, out)
            except OSError as exc:
                raise output_error(out, exc) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(tmp: Path, out: Path) -> None:
    old = None
    if out.exists() or out.is_symlink():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=_partial_name(out)))
        os.replace(out, old / "old")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def ensure_free_space(folder: str | Path, nbytes: int, what: str = "output") -> None:
    """Raise OutputError when the file system holding ``folder`` has less than ``nbytes`` free."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < nbytes:
        raise OutputError(
            f"{folder}: not enough free space for the {what} "
            f"({nbytes / 1e6:,.1f} MB needed, {free / 1e6:,.1f} MB free)"
        )


def preallocate(path: str | Path, nbytes: int) -> None:
    """Reserve ``nbytes`` for ``path`` now, so a later write (or memmap) cannot hit a full disk.

    Writing through a memory map into a sparse file on a full disk kills the process with SIGBUS;
    after ``posix_fallocate`` the blocks are ours and that cannot happen.
    """
    path = Path(path)
    try:
        with open(path, "r+b" if path.exists() else "wb") as fh:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fh.fileno(), 0, nbytes)
            else:  # pragma: no cover - macOS, Windows
                fh.truncate(nbytes)
    except OSError as exc:
        raise output_error(path, exc) from exc
