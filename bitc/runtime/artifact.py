"""The `.bitc` artifact: one zip file holding the compiled library and a manifest.

Stdlib only, so that the runtime can read what the compiler writes without importing the compiler. Members are
stored in a fixed order with fixed timestamps, so the same inputs give byte-identical files, and the manifest
records the sha256 of every member so a damaged or tampered artifact is refused before native code is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bitc.atomic import atomic_output
from bitc.errors import BadInputError, first_line

FORMAT = "bitc-artifact"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
LIBRARY_NAME = "model.so"
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)

# Bounds checked against the zip's central directory before any member is decompressed, so that a forged artifact
# can cost at most this much memory: the manifest (JSON text), any member, and how much a deflated member may grow.
MAX_MANIFEST_BYTES = 16 * 2**20
MAX_MEMBER_BYTES = 8 * 2**30
MAX_DEFLATE_RATIO = 200  # bitc's own manifests and PTX deflate ~5-30x; deflate itself tops out near 1032x
MAX_JSON_DEPTH = 64  # bitc writes at most ~8 levels; deeper nesting only makes later code recurse
_COMPRESSIONS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_artifact(path: str | os.PathLike, manifest: Mapping[str, Any], members: Mapping[str, bytes]) -> Path:
    """Write the artifact atomically (see `bitc.atomic`): never a partial file at `path`."""
    path = Path(path)
    manifest = dict(manifest)
    manifest["members"] = {
        name: {"sha256": sha256_hex(data), "size": len(data)} for name, data in sorted(members.items())
    }
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    with atomic_output(path) as raw, zipfile.ZipFile(raw, "w") as archive:
        _write_member(archive, MANIFEST_NAME, manifest_bytes)
        for name, data in sorted(members.items()):
            _write_member(archive, name, data)
    return path


def _write_member(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    """Text members (manifest, PTX) are deflated; libraries are stored (float weights barely compress, and
    loading stays fast)."""
    info = zipfile.ZipInfo(name, date_time=_FIXED_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED if name.endswith((".json", ".ptx")) else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


class Artifact:
    """A verified artifact: its manifest and member bytes, checked against the manifest's sha256 sums."""

    def __init__(self, path: Path, manifest: dict[str, Any], members: dict[str, bytes]):
        self.path = path
        self.manifest = manifest
        self.members = members

    @property
    def library(self) -> bytes:
        return self.members[LIBRARY_NAME]


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read only the manifest (no verification of members): enough for `bitc inspect`."""
    path = artifact_path(path)
    with _open_zip(path) as archive:
        return _parse_manifest(path, archive)


def read_artifact(path: str | os.PathLike) -> Artifact:
    """Open an artifact and verify every member against the manifest; refuse anything that does not match.
    Sizes come from the zip directory and are checked against the manifest before a member is decompressed."""
    path = artifact_path(path)
    with _open_zip(path) as archive:
        manifest = _parse_manifest(path, archive)
        listed = _member_table(path, manifest)
        present = set(archive.namelist()) - {MANIFEST_NAME}
        if present != set(listed):
            raise BadInputError(f"{path}: members {sorted(present)} do not match the manifest {sorted(listed)}")
        members = {name: _read_member(path, archive, name, size, digest) for name, (size, digest) in listed.items()}
    return Artifact(path, manifest, members)


def artifact_path(path: Any) -> Path:
    """`path` as a Path; anything else (a number, None, an open file) is refused by name, not as a TypeError."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        raise BadInputError(f"an artifact path must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def _member_table(path: Path, manifest: Mapping[str, Any]) -> dict[str, tuple[int, str]]:
    """The manifest's `members` as {name: (size, sha256)}, every entry type-checked."""
    listed = manifest.get("members")
    if not isinstance(listed, dict) or LIBRARY_NAME not in listed:
        raise BadInputError(f"{path}: manifest lists no '{LIBRARY_NAME}' member")
    table = {}
    for name, meta in listed.items():
        size = meta.get("size") if isinstance(meta, dict) else None
        digest = meta.get("sha256") if isinstance(meta, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(digest, str):
            raise BadInputError(f"{path}: checksum of member '{name}' does not match the manifest (malformed entry)")
        table[name] = (size, digest)
    return table


def _read_member(path: Path, archive: zipfile.ZipFile, name: str, size: int, digest: str) -> bytes:
    """The member's bytes, read only after its directory entry agrees with the manifest's size, and never more
    than that size (a member whose data runs longer than its directory entry is refused)."""
    info = archive.getinfo(name)
    if info.file_size != size:
        raise BadInputError(
            f"{path}: member '{name}' is {info.file_size} bytes in the zip directory, the manifest says {size}"
        )
    data = _bounded_read(path, archive, info, MAX_MEMBER_BYTES)
    if sha256_hex(data) != digest:
        raise BadInputError(f"{path}: checksum of member '{name}' does not match the manifest")
    return data


def _bounded_read(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """Read one member after checking its directory entry: at most `limit` bytes, at most MAX_DEFLATE_RATIO times
    its compressed size, and exactly its declared size."""
    what = f"{path}: member '{info.filename}'"
    if info.file_size > limit:
        raise BadInputError(f"{what} is {info.file_size} bytes; the limit is {limit} (refused)")
    if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1):
        raise BadInputError(
            f"{what} expands {info.compress_size} bytes to {info.file_size} "
            f"(more than {MAX_DEFLATE_RATIO}x: a zip bomb, refused)"
        )
    try:
        with archive.open(info) as stream:
            data = stream.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise BadInputError(f"{what} is damaged ({first_line(exc)})") from None
    if len(data) != info.file_size:
        raise BadInputError(f"{what} holds {len(data)} bytes, its zip directory entry says {info.file_size}")
    return data


def _check_directory(path: Path, archive: zipfile.ZipFile) -> None:
    """Refuse what the zip directory alone shows to be forged: names that leave the archive, a name listed twice
    (zipfile would read the last, `unzip` the first), encrypted members, compression other than stored/deflated."""
    names = archive.namelist()
    _check_member_names(path, names)
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise BadInputError(f"{path}: member name(s) {twice} appear more than once in the zip (refused)")
    for info in archive.infolist():
        if info.flag_bits & 0x1:
            raise BadInputError(f"{path}: member '{info.filename}' is encrypted (refused)")
        if info.compress_type not in _COMPRESSIONS:
            raise BadInputError(
                f"{path}: member '{info.filename}' uses zip compression method {info.compress_type}; "
                "bitc artifacts are stored or deflated only"
            )


def _check_member_names(path: Path, names: list[str]) -> None:
    """Members are only ever read into memory, but a name that could escape a folder marks a forged artifact."""
    for name in names:
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise BadInputError(f"{path}: member name {name!r} is absolute or leaves the archive (refused)")


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise BadInputError(f"{path}: no such artifact file")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise BadInputError(f"{path}: not a bitc artifact ({first_line(exc)})") from None
    try:
        _check_directory(path, archive)
    except BaseException:
        archive.close()
        raise
    return archive


def _parse_manifest(path: Path, archive: zipfile.ZipFile) -> dict[str, Any]:
    try:
        info = archive.getinfo(MANIFEST_NAME)
    except KeyError:
        raise BadInputError(f"{path}: not a bitc artifact (no {MANIFEST_NAME})") from None
    text = _bounded_read(path, archive, info, MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(text)
    except RecursionError:
        raise BadInputError(f"{path}: unreadable manifest (JSON nested too deeply)") from None
    except ValueError as exc:  # also UnicodeDecodeError, and integers too long to convert
        raise BadInputError(f"{path}: unreadable manifest ({first_line(exc)})") from None
    if json_depth(manifest) > MAX_JSON_DEPTH:
        raise BadInputError(f"{path}: unreadable manifest (JSON nested more than {MAX_JSON_DEPTH} levels)")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadInputError(f"{path}: not a bitc artifact (manifest format is not '{FORMAT}')")
    if type(manifest.get("format_version")) is not int or manifest["format_version"] != FORMAT_VERSION:
        raise BadInputError(
            f"{path}: artifact format version {str(manifest.get('format_version'))[:40]} is not supported "
            f"by this runtime (expects {FORMAT_VERSION}); recompile it with this bitc version"
        )
    return manifest


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (1 for a scalar)."""
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [
            child
            for item in level
            if isinstance(item, (dict, list))
            for child in (item.values() if isinstance(item, dict) else item)
        ]
    return depth
