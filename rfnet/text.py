"""The caption tokenizer: a local tokenizer folder, or the ``tiny`` word-level tokenizer built in code.

No machine this project runs on can download a tokenizer, so the ``tiny`` one is made here from a word
list with the ``tokenizers`` library and wrapped as a ``PreTrainedTokenizerFast`` with RoBERTa's special
tokens (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<mask>`` 4). It lower-cases, splits on
whitespace and punctuation and maps unknown words to ``<unk>``. The word list covers the captions of the
synthetic RF1M generator (a test checks that none of them produces ``<unk>``) plus common catalogue words.
"""

from __future__ import annotations

import os

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")

_WORDS = """
a an the of and or with for in on at to by from is it its this that real size class small medium large
tiny huge big little compact mini full oversized portable standing tabletop handheld floor desk
cm mm m kg g inch inches about around approx approximately x
product item set pack piece pieces new premium classic modern simple style design home office kitchen
outdoor indoor travel kids adult men women unisex gift
red orange yellow green blue purple pink brown black white grey gray silver gold beige cream navy teal
cyan magenta olive maroon light dark bright pale deep warm cool matte glossy striped dotted checked plain
textured wooden metal plastic glass ceramic leather fabric cotton steel bamboo paper rubber stone
mug cup bottle vase lamp clock speaker headphones phone watch ring bag backpack suitcase box jar bowl
plate kettle toaster blender fan heater chair armchair sofa table cabinet shelf bed desk wardrobe
fridge refrigerator washer dryer oven microwave television tv monitor printer camera drone toy ball
cushion pillow basket plant pot candle perfume lipstick cream shampoo soap brush comb mirror hat shoe
shoes sneaker boot sock glove scarf umbrella tent bicycle scooter stroller crib massage treadmill
chest dresser stool bench bookcase rug mat towel blanket lantern speaker router keyboard mouse tablet
laptop charger cable earbuds
round square oval rounded blob shaped tall wide flat slim thick curved
, . : ; ( ) - / + % & "
0 1 2 3 4 5 6 7 8 9 10 11 12 15 20 25 30 40 50 60 70 80 90 100 120 150 180 200
"""


def vocabulary() -> list[str]:
    """The tiny tokenizer's vocabulary: the special tokens, then the word list (deduplicated, in order)."""
    words: list[str] = list(SPECIAL_TOKENS)
    seen = set(words)
    for word in _WORDS.split():
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Build the offline word-level tokenizer (deterministic: the same ids on every machine)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    vocab = {word: i for i, word in enumerate(vocabulary())}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
    )


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """Return the tokenizer named by ``RFNetConfig.tokenizer``.

    Args:
        name: ``"tiny"`` or a local folder holding a transformers tokenizer.

    Raises:
        FileNotFoundError: ``name`` is neither ``"tiny"`` nor an existing folder.
    """
    if name == "tiny":
        return tiny_tokenizer()
    if not os.path.isdir(name):
        raise FileNotFoundError(f"tokenizer {name!r}: expected 'tiny' or a local folder with tokenizer files")
    return AutoTokenizer.from_pretrained(name, local_files_only=True)
