"""Atomic file output: readers see the old file or the whole new one, and a failure or interrupt leaves nothing.

Stdlib only, so the runtime layer can use it too.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write into a temp file beside `path`; on success fsync it, give it the usual mode and rename it over
    `path`; on any exception (KeyboardInterrupt included) remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, default_file_mode())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def default_file_mode() -> int:
    """What open() gives a new file (0o666 less the umask); mkstemp's 0o600 would hide outputs from the
    account that deploys them."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
