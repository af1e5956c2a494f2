"""The one checker of local paths the jobs are given (model folders and files, data folders).

Every job checks its paths where it starts, through :func:`checked_path`: a wrong path then fails at once
and named, in the driver, instead of in every actor or Ray Train worker that tries to load it; and the
path it returns is absolute, so it names the same files in workers whose working directory is not the
job's (Ray Train's is not). It lives in ``cluster``, the bottom layer, so ``rfnet`` and ``engine`` share it.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path


class ModelPathError(ValueError):
    """A model path is missing or does not hold what was expected. The message names both."""


def checked_path(
    value: str,
    what: str,
    *,
    presets: Collection[str] = (),
    folder: bool = False,
    inside: str | None = None,
    suffixes: tuple[str, ...] | None = None,
    required: bool = True,
) -> str:
    """``value`` as jobs and workers should use it: a preset name unchanged, a local path checked and absolute.

    Args:
        value: a preset name or a local path (``~`` expanded).
        what: what the path should be, for the error message (e.g. ``"ControlNet folder"``).
        presets: names that are not paths (``tiny``, ``paper``, ...).
        folder: the path must be a folder.
        inside: the path must be a folder holding this file (implies ``folder``).
        suffixes: the path must be a file with one of these suffixes (lower case, with the dot).
        required: when False, a path that does not exist here passes unchanged (an fsspec URI, or a folder
            only the workers see); one that exists is still checked.

    Raises:
        ModelPathError: the path is missing or not what ``what`` says, naming both.
    """
    if value in presets:
        return value
    p = Path(value).expanduser()
    if not p.exists():
        if not required:
            return value
        expected = f" (expected {', '.join(repr(n) for n in presets)} or a path)" if presets else ""
        raise ModelPathError(f"{what} not found: {p} does not exist{expected}")
    if inside is not None:
        if not p.is_dir():
            raise ModelPathError(f"{what} must be a folder (with {inside}), but {p} is a file")
        if not (p / inside).is_file():
            raise ModelPathError(f"{p} is not a {what}: expected {inside} inside it")
    elif folder and not p.is_dir():
        raise ModelPathError(f"{what} must be a folder, but {p} is a file")
    if suffixes is not None and (not p.is_file() or p.suffix.lower() not in suffixes):
        raise ModelPathError(f"{what} must be a {'/'.join(suffixes)} file, got {p}")
    return str(p.resolve())
