"""The files of an RFNet checkpoint folder, and reading its ``config.json``: no torch.

Apart from ``rfnet/checkpoint.py`` (which builds and loads models) so that a process that only checks a
checkpoint folder, like the refresh's driver, does not import torch for it.
"""

from __future__ import annotations

import json
import os

from rfnet.config import LABELS

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


def read_meta(folder: str) -> dict:
    """The parsed ``config.json`` of a checkpoint folder, with its label set checked.

    Raises:
        FileNotFoundError: not a checkpoint folder.
        ValueError: the labels differ from ``LABELS``, named with the file.
    """
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(folder, WEIGHTS_NAME)):
        raise FileNotFoundError(
            f"RFNet checkpoint {folder!r}: expected 'tiny', 'paper' or a folder with {CONFIG_NAME} + {WEIGHTS_NAME}"
        )
    with open(path) as f:
        meta = json.load(f)
    if tuple(meta.get("labels", ())) != LABELS:
        raise ValueError(f"{path}: labels {meta.get('labels')} differ from this code's {list(LABELS)}")
    return meta
