"""An offline CLIP tokenizer for the random-weight presets.

The real SD 1.5 tokenizer lives on the hub, which no machine of this project can reach. The presets
need only *a* CLIP-format tokenizer (byte-level BPE, ``</w>`` word ends, start/end tokens), so we train
a small one here, deterministically, on the vocabulary of advertising prompts. Every byte has a
token, so any text tokenises; common prompt words become single tokens so prompts fit in 77.
Real users load the real tokenizer with their base model folder.
"""

from __future__ import annotations

import functools
import re
from collections import Counter

from transformers import CLIPTokenizer

# Words the merges are learned from: the authors' prompt templates, colours, product nouns.
_CORPUS = """
front view of a product placed on white desktop bright indoor scene commercial photography high quality
product on a wooden table in a cozy living room soft light advertising photo realistic detailed
product placed on a marble countertop in a modern kitchen natural light studio shot
product on a podium with a {} background minimalist studio lighting clean professional
product standing on grass in a garden outdoor sunny day depth of field
worst quality low quality normal quality lowres blurry watermark text logo signature deformed ugly
light pea green light yellow light pink light sky blue cream silver beige white black red blue green
chair table lamp bottle cup shoe bag watch phone sofa cabinet vase box speaker kettle massage
small medium large furniture electronics kitchen beauty fashion home sports toy
"""
_SPECIAL = ("<|startoftext|>", "<|endoftext|>")
_WORD = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _learn_merges(corpus: str, num_merges: int) -> list[tuple[str, str]]:
    """Plain BPE: repeatedly merge the most frequent adjacent pair (ties broken alphabetically)."""
    words = Counter(_WORD.findall(corpus.lower()))
    splits = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, parts in splits.items():
            for pair in zip(parts, parts[1:], strict=False):
                pairs[pair] += words[word]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for word, parts in splits.items():
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            splits[word] = tuple(merged)
    return merges


@functools.cache
def _vocab_and_merges(num_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    merges = _learn_merges(_CORPUS, num_merges)
    tokens += [a + b for a, b in merges]
    tokens += list(_SPECIAL)
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return vocab, merges


def build_tokenizer(num_merges: int = 400, model_max_length: int = 77) -> CLIPTokenizer:
    """Return a CLIP tokenizer built entirely in code (no files, no network).

    Its vocabulary has ``len(tokenizer)`` entries (well under 1024 for the default), so a text encoder
    with ``vocab_size >= 1024`` accepts every id it produces.
    """
    vocab, merges = _vocab_and_merges(num_merges)
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)
