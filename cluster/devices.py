"""The one device and precision policy of the project.

Every model is placed and cast through :func:`resolve_device` and :func:`resolve_dtype`, so the rules
(CPU is always fp32; bf16 only where the hardware has it; fp16 only on CUDA) live in one place.
"""

from __future__ import annotations

import torch

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """Map a device name to a ``torch.device``.

    Args:
        name: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        ValueError: CUDA was asked for on a machine without it.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but this machine has no CUDA device")
    return device


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """Map a precision name (``fp32`` | ``bf16`` | ``fp16``) to the dtype used for *frozen* weights.

    CPU always computes in fp32: half-precision convolutions are slow or missing there, so asking for
    them on CPU quietly falls back to fp32 (the result is the same model, only slower on GPU).

    Raises:
        ValueError: an unknown name, or bf16 on a GPU without bf16 support.
    """
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}")
    device = torch.device(device)
    if device.type != "cuda":
        return torch.float32
    if name == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError("bf16 was asked for, but this GPU does not support it; use fp16 or fp32")
    return _DTYPES[name]
