"""Config plumbing every package shares: the one ``from_dict`` that turns plain data into a typed config.

It lives in ``cluster``, the bottom of the import layering, so ``rfnet``, ``engine`` and ``rfft`` can all use
it. A config read from JSON (a checkpoint's ``config.json``, a run's resolved config, Ray Train's
``train_loop_config``) goes through it, so unknown keys are refused the same way everywhere.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build the dataclass ``cls`` from ``data``.

    Nested dataclass fields (``RFFTConfig.generator``, ``TrainConfig.model``, optional ones too) are built
    from nested mappings the same way; values of other types pass unchanged to ``cls``, whose
    ``__post_init__`` validates them.

    Raises:
        ValueError: ``data`` is not a mapping, or has keys that are not fields of ``cls`` (all named).
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__}: expected a mapping of fields, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        nested = _dataclass_in(hints.get(key))
        kwargs[key] = from_dict(nested, value) if nested is not None and isinstance(value, Mapping) else value
    return cls(**kwargs)


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass a field's type names: itself, or the dataclass member of ``X | None``."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if isinstance(a, type) and dataclasses.is_dataclass(a)]
        return members[0] if len(members) == 1 else None
    return None


def field_default(cls: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``cls``, read without building one (a default factory is
    called): what a job's ``--help`` shows, from the config's own declaration."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
