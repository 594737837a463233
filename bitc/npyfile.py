""".npy / .npz files from users, read only after their headers are checked, and .npy outputs written atomically.

numpy trusts the header: a FIFO blocks forever, a header claiming a TiB shape is allocated before any data is
read, and an object dtype or a file of another format fails with a multi-line message. Here each is one line
naming the file.
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format

from bitc.atomic import atomic_output
from bitc.errors import BadInputError, BitcError, first_line

_MAX_HEADER = 10_000  # numpy's own default bound on a header's length


def load_npy(file: str | os.PathLike) -> np.ndarray:
    """A numeric array from an .npy file (a regular file whose header agrees with its size)."""
    path = Path(file)
    size = _regular_file_size(path)
    try:
        with path.open("rb") as handle:
            check_npy_header(handle, size, str(file))
            handle.seek(0)
            return npy_format.read_array(handle, allow_pickle=False, max_header_size=_MAX_HEADER)
    except BitcError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise BadInputError(f"{file}: not a readable .npy array ({first_line(exc)})") from None


def check_npz(file: str | os.PathLike) -> None:
    """Refuse an .npz whose members are not numeric .npy arrays that fit their declared sizes (an .npy given
    where named arrays are expected included), without reading any array data."""
    path = Path(file)
    _regular_file_size(path)
    if not zipfile.is_zipfile(path):
        raise BadInputError(f"{file}: not an .npz archive of named arrays (write it with numpy.savez)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = [info.filename for info in archive.infolist()]
            if len(names) != len(set(names)):
                raise BadInputError(f"{file}: the archive holds the same member name twice")
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    raise BadInputError(f"{file}: member '{info.filename}' is not an .npy array")
                with archive.open(info) as handle:
                    check_npy_header(handle, info.file_size, f"{file}:{info.filename}")
    except BitcError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise BadInputError(f"{file}: not a readable .npz archive ({first_line(exc)})") from None


def check_npy_header(handle: IO[bytes], size: int, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an .npy header at the handle's position, refused unless the dtype is numeric and
    the data it announces fits in the `size` bytes the file holds."""
    try:
        version = npy_format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(handle, max_header_size=_MAX_HEADER)
        elif version == (2, 0):
            shape, _, dtype = npy_format.read_array_header_2_0(handle, max_header_size=_MAX_HEADER)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise BadInputError(f"{name}: not a readable .npy array ({first_line(exc)})") from None
    raw = dtype.kind == "V" and dtype.subdtype is None  # ml_dtypes arrays (bfloat16, float8...) as np.save writes them
    if (dtype.kind not in "biufc" and not raw) or dtype.hasobject or dtype.fields is not None:
        raise BadInputError(f"{name}: dtype {dtype} is not a numeric array")
    needed = math.prod(int(d) for d in shape) * dtype.itemsize
    available = size - handle.tell()
    if needed > available:
        raise BadInputError(
            f"{name}: the header announces shape {list(shape)} ({needed:,} bytes) but the file holds {available:,}"
        )
    return tuple(shape), dtype


def save_npy(file: str | os.PathLike, array: Any) -> None:
    """np.save through a temp file: a full disk or an interrupt leaves no truncated or empty .npy."""
    try:
        with atomic_output(file) as handle:
            np.save(handle, _portable(np.asarray(array)), allow_pickle=False)
    except OSError as exc:
        raise BitcError(f"{file}: cannot write ({exc.strerror or first_line(exc)})") from None


def _portable(array: np.ndarray) -> np.ndarray:
    """ml_dtypes arrays (bfloat16, float8, int4...) as raw bytes: numpy writes some of their descriptors as
    '<f1', which no numpy can read back; the bytes load anywhere and `load_npy` readers view them again."""
    from bitc.runtime.narrow_dtypes import CARRIERS

    return array.view(f"V{array.dtype.itemsize}") if array.dtype.name in CARRIERS else array


def _regular_file_size(path: Path) -> int:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file") from None
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read it ({exc.strerror or first_line(exc)})") from None
    if not stat.S_ISREG(info.st_mode):
        raise BadInputError(f"{path}: not a regular file (a FIFO, device or folder cannot be read as an array)")
    return info.st_size
