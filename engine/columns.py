"""Helpers for the column batches the refresh stages pass to each other; numpy only, so any stage can use them."""

from __future__ import annotations

import json

import numpy as np


def encode_lists(rows) -> np.ndarray:
    """(B, m) strings -> (B,) JSON strings, one list per row.

    Per-candidate strings travel this way because Ray Data stores (B, m) string arrays as fixed-width
    tensors that cannot be concatenated across blocks.
    """
    return np.array([json.dumps([str(x) for x in row]) for row in rows], dtype=object).astype(str)
