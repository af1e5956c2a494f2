"""Storage through fsspec: local paths and any fsspec URI look the same to the rest of the code.

Writes are atomic where the filesystem allows it (write to a temporary name, then rename), so a crash
never leaves a half-written file under its final name.
"""

from __future__ import annotations

import os
import posixpath
import uuid

import fsspec


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path-within-it)`` for a local path or an fsspec URI."""
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URI with ``/`` separators."""
    if "://" in base:
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def is_relative(path: str) -> bool:
    """A local path relative to some folder: neither absolute nor a URI."""
    return "://" not in path and not path.startswith("/")


def resolve(base: str, path: str) -> str:
    """``path`` as written in a manifest or an output row under ``base``: a relative path is joined onto
    ``base``; an absolute path or a URI is returned as it is."""
    return join(base, path) if is_relative(path) else path


def absolute(uri: str) -> str:
    """A local path made absolute (against this process's working directory); a URI as it is. Ray's
    workers do not share the driver's working directory, so a relative output path must not reach them."""
    if "://" in uri:
        return uri
    return os.path.abspath(uri)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` so that readers see either nothing or the whole file."""
    fs, path = filesystem(uri)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)
