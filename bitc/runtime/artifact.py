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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bitc.atomic import atomic_output
from bitc.errors import BadInputError

FORMAT = "bitc-artifact"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
LIBRARY_NAME = "model.so"
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)


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
    with _open_zip(Path(path)) as archive:
        return _parse_manifest(Path(path), archive)


def read_artifact(path: str | os.PathLike) -> Artifact:
    """Open an artifact and verify every member against the manifest; refuse anything that does not match."""
    path = Path(path)
    with _open_zip(path) as archive:
        _check_member_names(path, archive.namelist())
        manifest = _parse_manifest(path, archive)
        listed = manifest.get("members")
        if not isinstance(listed, dict) or LIBRARY_NAME not in listed:
            raise BadInputError(f"{path}: manifest lists no '{LIBRARY_NAME}' member")
        present = set(archive.namelist()) - {MANIFEST_NAME}
        if present != set(listed):
            raise BadInputError(f"{path}: members {sorted(present)} do not match the manifest {sorted(listed)}")
        members: dict[str, bytes] = {}
        for name, meta in listed.items():
            try:
                data = archive.read(name)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise BadInputError(f"{path}: member '{name}' is damaged ({exc})") from None
            if not isinstance(meta, dict) or sha256_hex(data) != meta.get("sha256"):
                raise BadInputError(f"{path}: checksum of member '{name}' does not match the manifest")
            members[name] = data
    return Artifact(path, manifest, members)


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
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BadInputError(f"{path}: not a bitc artifact ({exc})") from None


def _parse_manifest(path: Path, archive: zipfile.ZipFile) -> dict[str, Any]:
    try:
        manifest = json.loads(archive.read(MANIFEST_NAME))
    except KeyError:
        raise BadInputError(f"{path}: not a bitc artifact (no {MANIFEST_NAME})") from None
    except (ValueError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise BadInputError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadInputError(f"{path}: not a bitc artifact (manifest format is not '{FORMAT}')")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BadInputError(
            f"{path}: artifact format version {manifest.get('format_version')} is not supported "
            f"by this runtime (expects {FORMAT_VERSION}); recompile it with this bitc version"
        )
    return manifest
