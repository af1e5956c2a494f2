"""Weights from files, checked: every tensor a module needs is in the file with its shape, and every tensor in the
file is used. Otherwise one error names the file, the missing and the unexpected keys and the shapes that
differ, before anything runs (``torch``'s own ``load_state_dict`` error names no file, and transformers'
``from_pretrained`` only warns and initialises the missing weights at random). A transformers folder must
also name a supported architecture in its ``config.json``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn


class PretrainedWeightsError(ValueError):
    """A model file or folder that is not a supported architecture, or whose weights do not fit it."""


def _listed(keys: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... and {len(keys) - limit} more' if len(keys) > limit else ''}]"


def check_fit(
    path: str, what: str, missing: Sequence[str], unexpected: Sequence[str], mismatched: Sequence[str] = ()
) -> None:
    """Raise unless nothing is missing, unexpected or of another shape.

    Args:
        path: the file or folder the weights came from (named in the error).
        what: what they should fit (e.g. ``"U^2-Net (full)"``).
        missing, unexpected, mismatched: the keys (``mismatched``: ``"key: shapes"`` lines).

    Raises:
        PretrainedWeightsError: naming ``path`` and every list that is not empty.
    """
    if missing or unexpected or mismatched:
        raise PretrainedWeightsError(
            f"{path}: the weights do not fit {what}: {len(missing)} missing {_listed(list(missing))}, "
            f"{len(unexpected)} unexpected {_listed(list(unexpected))}, "
            f"{len(mismatched)} of another shape {_listed(list(mismatched))}"
        )


def load_checked(
    module: nn.Module, state: Mapping[str, torch.Tensor], path: str, what: str, optional: tuple[str, ...] = ()
) -> None:
    """``module.load_state_dict(state)`` after checking that the keys and shapes match exactly.

    Args:
        module: the module to fill.
        state: the tensors read from ``path``.
        path: named in the error.
        what: what the weights should fit, named in the error.
        optional: key suffixes that may be missing (buffers such as ``num_batches_tracked``, which older
            checkpoints lack and inference never reads); they keep the module's values.

    Raises:
        PretrainedWeightsError: ``state`` is not a mapping of tensors, or its keys or shapes differ.
    """
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path}: not a state dict (a mapping of names to tensors)")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(optional)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} expected"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    check_fit(path, what, missing, unexpected, mismatched)
    module.load_state_dict(state, strict=False)  # checked above: only ``optional`` keys can be absent


def load_pretrained(
    path: str, model_class: Any, supported: Sequence[str], what: str, unused: Sequence[str] = (), **kwargs
):
    """The transformers model in local folder ``path``, as the architecture its ``config.json`` names, with every
    weight checked.

    Args:
        path: the folder.
        model_class: what builds it (``AutoModel``, ``ResNetModel``, ...), through ``from_pretrained``.
        supported: the ``model_type`` values accepted.
        what: what the folder should hold, for the error (e.g. ``"a supported caption encoder"``).
        unused: keys containing one of these may be missing or left over (parts that never run: a classifier's
            head, a text pooler, a masked-LM or pretraining head).
        kwargs: more ``from_pretrained`` arguments.

    Raises:
        PretrainedWeightsError: another architecture, or weights that do not fit (``check_fit``).
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type not in supported:
        raise PretrainedWeightsError(
            f"{path}/config.json: model_type {config.model_type!r} is not {what}; expected one of {', '.join(supported)}"
        )
    model, info = model_class.from_pretrained(
        path, config=config, local_files_only=True, output_loading_info=True, **kwargs
    )
    missing = [k for k in info["missing_keys"] if not any(u in k for u in unused)]
    unexpected = [k for k in info["unexpected_keys"] if not any(u in k for u in unused)]
    mismatched = [f"{k}: {a} in the file, {b} expected" for k, a, b in info.get("mismatched_keys", [])]
    check_fit(path, type(model).__name__, missing, unexpected, mismatched)
    return model
