"""Prompt configs in the authors' JSON format, and the choice of prompt for an attempt.

A prompt config is a JSON list of templates::

    [{"prompt": "...", "negative_prompt": "...", "image_scale": 0.75, "matting": 0, "flag": 0}, ...]

``flag: 1`` marks a prompt with a ``{}`` slot that is filled with a background colour. ``image_scale``
sets how large the product is laid out. ``matting`` is kept for compatibility with the authors' files:
our decoder always derives the mask (alpha, or white keying), so it has no further effect.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PROMPTS = Path(__file__).parent / "assets" / "prompts.json"

# Background colours for the {} slot, as in the authors' config.
COLOURS = ("light pea green", "light yellow", "light pink", "light sky blue", "cream", "silver", "beige")


class PromptConfigError(ValueError):
    """A prompt config file that does not follow the format; the message names the file and entry."""


@dataclass(frozen=True)
class PromptTemplate:
    prompt: str
    negative_prompt: str = ""
    image_scale: float = 0.75
    matting: int = 0
    flag: int = 0


def load_prompt_config(path: str | Path | None = None) -> list[PromptTemplate]:
    """Read and validate a prompt config (the bundled default when ``path`` is None)."""
    path = Path(path) if path is not None else DEFAULT_PROMPTS
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise PromptConfigError(f"prompt config not found: {path}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PromptConfigError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(entries, list) or not entries:
        raise PromptConfigError(f"{path}: expected a non-empty JSON list of prompt templates")
    templates = []
    for i, entry in enumerate(entries):
        where = f"{path} entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
            raise PromptConfigError(f"{where}: needs a non-empty string 'prompt'")
        unknown = set(entry) - {"prompt", "negative_prompt", "image_scale", "matting", "flag"}
        if unknown:
            raise PromptConfigError(f"{where}: unknown keys {sorted(unknown)}")
        template = PromptTemplate(
            prompt=entry["prompt"],
            negative_prompt=str(entry.get("negative_prompt", "")),
            image_scale=float(entry.get("image_scale", 0.75)),
            matting=int(entry.get("matting", 0)),
            flag=int(entry.get("flag", 0)),
        )
        if not 0.05 <= template.image_scale <= 1.0:
            raise PromptConfigError(f"{where}: image_scale must be in [0.05, 1], got {template.image_scale}")
        if template.flag not in (0, 1):
            raise PromptConfigError(f"{where}: flag must be 0 or 1, got {template.flag}")
        if template.flag == 1 and template.prompt.count("{}") != 1:
            raise PromptConfigError(f"{where}: flag 1 needs exactly one '{{}}' colour slot in the prompt")
        templates.append(template)
    return templates


def template_index(num_templates: int, seed: int, attempt: int, rotate_after: int) -> int:
    """Which template an attempt uses: a start picked by the SKU's first seed, moving to the next
    template after every ``rotate_after`` failed attempts (0 never rotates)."""
    start = seed % num_templates
    step = (attempt - 1) // rotate_after if rotate_after > 0 else 0
    return (start + step) % num_templates


def render_prompt(
    template: PromptTemplate, seed: int, caption: str = "", mix_caption: bool = False
) -> tuple[str, str]:
    """The (prompt, negative prompt) of one attempt. The colour slot is filled from ``seed``, so the
    prompt is as reproducible as the image."""
    prompt = template.prompt
    if template.flag == 1:
        prompt = prompt.replace("{}", COLOURS[(seed >> 8) % len(COLOURS)], 1)
    if mix_caption and caption:
        prompt = f"{caption}, {prompt}"
    return prompt, template.negative_prompt
