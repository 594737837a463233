"""Atomic file output: readers see the old file or the whole new one, and a failure or interrupt leaves nothing.

A SIGKILL cannot be cleaned up after, so every temp file and folder bitc makes carries its owner's pid and is
held under an advisory lock while in use: a later bitc process removes those whose owner is gone (never another
program's files, never a live process's). Stdlib only, so the runtime layer can use it too.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from bitc.errors import BadInputError

try:
    import fcntl
except ImportError:  # not on Windows: the pid check alone decides there
    fcntl = None  # type: ignore[assignment]

# .<target name>.bitc-<pid>-<mkstemp's random part>.tmp beside the target
_TEMP_FILE = re.compile(r"^\..+\.bitc-(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")
# bitc-<pid>-<random> in the temp folder: one per process, for build files and libraries being loaded
_TEMP_DIR = re.compile(r"^bitc-(?P<pid>\d+)-[A-Za-z0-9_]+$")
_LOCK_NAME = ".lock"


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write into a temp file beside `path`; on success fsync it, give it the usual mode and rename it over
    `path`; on any exception (KeyboardInterrupt included) remove it."""
    with atomic_path(path) as tmp, open(tmp, "r+b") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Like `atomic_output`, for writers that want a file name (e.g. `onnx_ir.save`, given its format since the
    temp name ends in .tmp): they write the yielded temp path, and it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.bitc-{os.getpid()}-", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        _lock(fd)  # held until the fd closes: tells a cleaner in another pid namespace that we are alive
        yield tmp
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def check_output_path(path: str | os.PathLike, source: str | os.PathLike | None = None) -> None:
    """Refuse an output that would replace the source model (same file through any link), a folder, FIFO or
    device, or that lies under a file or in a folder this process cannot write. Cheap: call it before the work
    that produces the output."""
    path = Path(path)
    source = Path(source) if source is not None else None
    if str(path).endswith(("/", os.sep)) or path.is_dir():
        raise BadInputError(f"{path}: is a folder; the output needs a file name (e.g. model.bitc)")
    try:
        found = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        found = None
    except OSError as exc:
        raise BadInputError(f"{path}: cannot write the output there ({exc.strerror})") from None
    if found is not None:
        if not stat.S_ISREG(found.st_mode):
            raise BadInputError(f"{path}: exists and is not a regular file (FIFO, device, socket); not replacing it")
        if source is not None and source.exists() and os.path.samestat(found, source.stat()):
            raise BadInputError(f"{path}: is the input {source} itself; give the output another name (-o)")
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise BadInputError(f"{path}: {folder} is a file, not a folder")
    if (error := can_create_in(folder)) is not None:
        raise BadInputError(f"{path}: cannot write in the folder {folder} ({error.strerror or error})")


def can_create_in(folder: str | os.PathLike) -> OSError | None:
    """Try creating (and removing) a temp file in `folder`: the one test that also holds for root, read-only
    mounts and /proc. Returns the error, or None when a file can be written there."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".probe.bitc-{os.getpid()}-", suffix=".tmp", dir=folder)
    except OSError as exc:
        return exc
    try:
        os.close(fd)
    finally:
        os.unlink(name)
    return None


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove bitc temp files in `folder` left by processes that died (SIGKILL, power loss); returns them."""
    removed = []
    for entry in _entries_of_dead_processes(folder, _TEMP_FILE, folders=False):
        if _unlink_if_unlocked(Path(entry.path)):
            removed.append(Path(entry.path))
    return removed


def _entries_of_dead_processes(folder: str | os.PathLike, pattern: re.Pattern, *, folders: bool) -> list[os.DirEntry]:
    """Entries of `folder` named by `pattern` (with a `pid` group) whose process is gone: files, or folders."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    dead = []
    for entry in entries:
        match = pattern.match(entry.name)
        kind_ok = entry.is_dir(follow_symlinks=False) if folders else entry.is_file(follow_symlinks=False)
        if match is not None and kind_ok and not _pid_alive(int(match["pid"])):
            dead.append(entry)
    return dead


_process_dir: Path | None = None
_process_dir_owner = 0
_process_dir_lock = threading.Lock()


def process_temp_dir() -> Path:
    """This process's private folder under the temp folder (TMPDIR): build files and libraries being loaded
    live here, it is removed at exit, and the first call removes the folders of bitc processes that died."""
    global _process_dir, _process_dir_owner
    with _process_dir_lock:
        if _process_dir is not None and _process_dir_owner == os.getpid() and _process_dir.is_dir():
            return _process_dir
        base = _temp_base()
        remove_stale_temp_dirs(base)
        try:
            folder = Path(tempfile.mkdtemp(prefix=f"bitc-{os.getpid()}-", dir=base))
            fd = os.open(folder / _LOCK_NAME, os.O_CREAT | os.O_WRONLY, 0o600)
        except OSError as exc:
            raise BadInputError(f"cannot create a temp folder in {base} (TMPDIR): {exc.strerror or exc}") from None
        _lock(fd)  # never closed: the lock lasts as long as the process
        _process_dir, _process_dir_owner = folder, os.getpid()
        atexit.register(_remove_process_dir, folder, os.getpid())
        return folder


def remove_stale_temp_dirs(base: str | os.PathLike) -> list[Path]:
    """Remove `bitc-<pid>-*` folders in `base` whose process is gone; returns them."""
    removed = []
    for entry in _entries_of_dead_processes(base, _TEMP_DIR, folders=True):
        lock = Path(entry.path) / _LOCK_NAME
        if lock.exists() and not _unlocked(lock):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    return removed


def _temp_base() -> Path:
    """The temp folder, refusing an unusable TMPDIR by name (Python would silently pick another folder, and the
    C compiler TVM links with would then fail with a message about the artifact)."""
    for variable in ("TMPDIR", "TEMP", "TMP"):
        value = os.environ.get(variable)
        if value:
            if not os.path.isdir(value) or not os.access(value, os.W_OK | os.X_OK):
                raise BadInputError(f"{variable}={value}: not a writable folder (bitc keeps its build files there)")
            return Path(value)
    return Path(tempfile.gettempdir())


def _remove_process_dir(folder: Path, owner: int) -> None:
    if os.getpid() == owner:  # a forked child must not remove its parent's folder
        shutil.rmtree(folder, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's live process, or we cannot tell: keep its files
    return True


def _lock(fd: int) -> None:
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlocked(path: Path) -> bool:
    """Whether no process holds `path`'s lock (True without fcntl: then the pid check alone decides)."""
    if fcntl is None:
        return True
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _unlink_if_unlocked(path: Path) -> bool:
    if not _unlocked(path):
        return False
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return True


def default_file_mode() -> int:
    """What open() gives a new file (0o666 less the umask); mkstemp's 0o600 would hide outputs from the
    account that deploys them."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
