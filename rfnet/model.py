"""RFNet: product cutout + generated ad + its depth and saliency + the caption -> six-way logits.

The network follows the paper (docs/paper.md §3.2):

1. A ResNet trunk (``transformers.ResNetModel``) encodes each image modality into a grid of tokens,
   projected to ``width``, plus a learned position embedding and a learned per-modality embedding.
   By default one trunk is shared by all four images (docs/paper.md §8, Q3).
2. A text encoder encodes the caption; its tokens are projected to ``width``. Built, it is a RoBERTa
   (``transformers.RobertaModel``); loaded from a folder, any BERT, RoBERTa or XLM-R family checkpoint,
   through ``AutoModel`` with the architecture its ``config.json`` names (the "Chinese RoBERTa" models
   used for JD's product titles are BERT-architecture checkpoints: as a ``RobertaModel`` they would load
   with every position embedding shifted by the padding offset, and no error).
3. The Feature Filter Module: the product tokens query the caption,
   ``e_f = Conv(Conv(CrossAttn(Q=e_o, K=V=e_c)) * Conv(e_o)) + e_o`` (1x1 convs over tokens, i.e. Linear).
4. ``fusion_layers`` self-attention layers over ``[CLS] + e_f + e_g + e_d + e_s``, then a linear head on CLS.

Calling the model on tensors (what RFFT's differentiable reward does)::

    model, preprocess = rfnet.load("path/to/checkpoint")           # or "tiny"
    depth, saliency = rfnet.load_depth("tiny"), rfnet.load_saliency("tiny")
    maps = {"depth": depth(images.detach()), "saliency": saliency(images.detach())}   # detached, no grad
    batch = preprocess(product_rgba=product, generated=images, captions=captions, **maps)
    logits = model(**batch)                                          # (B, 6), LABELS order
    reward = logits.log_softmax(-1)[:, 0]                            # log P(Available), differentiable in images

Here ``images`` is (B, 3, H, W) float in [0, 1] and ``product`` is (B, 4, H, W) float in [0, 1] (RGBA).
``rfnet.Scorer.logits`` wraps exactly these lines. Disabled modalities (``cfg.modalities``) may be omitted.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, ResNetConfig, ResNetModel, RobertaConfig, RobertaModel

from rfnet.config import IMAGE_MODALITIES, RFNetConfig
from rfnet.text import load_tokenizer
from rfnet.weights import PretrainedWeightsError, load_pretrained


class FeatureFilter(nn.Module):
    """The paper's FFM: keep the caption attributes that the product image makes relevant (gated, residual)."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        # The paper writes 1x1 "Conv"s over the token sequence; on (B, N, C) tokens that is a Linear.
        self.conv_attn = nn.Linear(width, width)
        self.conv_gate = nn.Linear(width, width)
        self.conv_out = nn.Linear(width, width)

    def forward(self, e_o: torch.Tensor, e_c: torch.Tensor, caption_padding: torch.Tensor | None) -> torch.Tensor:
        """e_o (B, N, C) product tokens; e_c (B, T, C) caption tokens; caption_padding (B, T) bool, True = pad."""
        kv = self.norm_kv(e_c)
        attended, _ = self.cross_attn(self.norm_q(e_o), kv, kv, key_padding_mask=caption_padding, need_weights=False)
        return self.conv_out(self.conv_attn(attended) * self.conv_gate(e_o)) + e_o


def load_image_trunk(path: str) -> ResNetModel:
    """The ResNet trunk in ``path``: a ``ResNetModel`` folder or a classifier's (``microsoft/resnet-50``'s
    layout, whose ``resnet.`` prefix transformers strips), with every trunk weight loaded.

    Raises:
        PretrainedWeightsError: ``config.json`` names another architecture, or the weights do not fit.
    """
    # A classifier's head is not part of the trunk.
    return load_pretrained(path, ResNetModel, ("resnet",), "a supported image trunk", unused=("classifier",))


def _image_trunk(cfg: RFNetConfig) -> ResNetModel:
    if cfg.image_encoder_path:
        return load_image_trunk(cfg.image_encoder_path)
    return ResNetModel(ResNetConfig(**cfg.image_encoder))


# Caption encoders a folder may hold (``config.json`` ``model_type``): the BERT family and its relatives.
TEXT_ENCODER_TYPES = ("bert", "roberta", "xlm-roberta")
# What a published caption-encoder checkpoint carries besides the encoder, none of which RFNet runs (it reads the
# token states): the pooler, and the pretraining heads of the layouts these models are released in
# (roberta-base and xlm-roberta-base: ``*ForMaskedLM``, ``lm_head.*``; a BERT-architecture Chinese RoBERTa such
# as hfl/chinese-roberta-wwm-ext: ``BertForMaskedLM``/``BertForPreTraining``, ``cls.predictions.*`` and
# ``cls.seq_relationship.*``).
TEXT_HEADS = ("pooler", "lm_head.", "cls.predictions.", "cls.seq_relationship.")


def load_text_encoder(path: str) -> nn.Module:
    """The caption encoder in ``path`` (a transformers folder), with every weight of the checkpoint loaded.

    Raises:
        PretrainedWeightsError: ``config.json`` names an unsupported architecture, or the weights miss keys
            the architecture needs or carry keys it does not have (both listed).
    """
    return load_pretrained(
        path, AutoModel, TEXT_ENCODER_TYPES, "a supported caption encoder", unused=TEXT_HEADS, add_pooling_layer=False
    )


def _text_encoder(cfg: RFNetConfig) -> nn.Module:
    if cfg.text_encoder_path:
        return load_text_encoder(cfg.text_encoder_path)
    kwargs = dict(cfg.text_encoder)
    model_type = kwargs.pop("model_type", "roberta")  # what a checkpoint of a loaded encoder records
    if model_type not in TEXT_ENCODER_TYPES:
        raise PretrainedWeightsError(f"text_encoder model_type {model_type!r}: expected one of {TEXT_ENCODER_TYPES}")
    if "vocab_size" not in kwargs or "pad_token_id" not in kwargs:
        tokenizer = load_tokenizer(cfg.tokenizer)
        kwargs.setdefault("vocab_size", len(tokenizer))
        kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    if model_type == "roberta":
        return RobertaModel(RobertaConfig(**kwargs), add_pooling_layer=False)
    return AutoModel.from_config(AutoConfig.for_model(model_type, **kwargs), add_pooling_layer=False)


def _check_caption_length(cfg: RFNetConfig, config) -> None:
    """Raise unless ``max_caption_tokens`` fits the caption encoder's position table (else the embedding lookup
    fails mid-forward with an index error that names nothing)."""
    # RoBERTa and XLM-R number positions from padding_idx + 1, so their last two table rows are never usable.
    offset = config.pad_token_id + 1 if config.model_type in ("roberta", "xlm-roberta") else 0
    positions = config.max_position_embeddings - offset
    if cfg.max_caption_tokens > positions:
        where = os.path.join(cfg.text_encoder_path, "config.json") if cfg.text_encoder_path else "text_encoder"
        raise PretrainedWeightsError(
            f"{where}: the caption encoder has {positions} positions, fewer than max_caption_tokens "
            f"{cfg.max_caption_tokens}"
        )


class RFNet(nn.Module):
    """The reliability classifier. ``forward`` takes *preprocessed* tensors (see ``rfnet.preprocess``)."""

    def __init__(self, cfg: RFNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        images = cfg.image_modalities
        if cfg.shared_image_encoder:
            self.image_encoder = _image_trunk(cfg)
            trunks = {m: self.image_encoder for m in images}
        else:
            self.image_encoders = nn.ModuleDict({m: _image_trunk(cfg) for m in images})
            trunks = dict(self.image_encoders.items())

        # The token grid depends on the trunk's strides; one dry run at build time reads it off.
        trunk = trunks[images[0]]
        with torch.no_grad():
            grid = trunk(torch.zeros(1, 3, cfg.image_size, cfg.image_size)).last_hidden_state
        channels, self.grid = grid.shape[1], tuple(grid.shape[2:])
        n_tokens = self.grid[0] * self.grid[1]
        self.image_proj = nn.Linear(channels, cfg.width)
        self.image_pos = nn.Parameter(torch.randn(1, n_tokens, cfg.width) * 0.02)
        self.modality_embed = nn.Parameter(torch.randn(len(images), cfg.width) * 0.02)

        if "caption" in cfg.modalities:
            self.text_encoder = _text_encoder(cfg)
            _check_caption_length(cfg, self.text_encoder.config)
            self.text_proj = nn.Linear(self.text_encoder.config.hidden_size, cfg.width)
            if cfg.caption_in_fusion or "product" not in cfg.modalities:
                self.caption_embed = nn.Parameter(torch.randn(1, 1, cfg.width) * 0.02)  # modality embedding
        if "caption" in cfg.modalities and "product" in cfg.modalities:
            self.ffm = nn.ModuleList(FeatureFilter(cfg.width, cfg.heads, cfg.dropout) for _ in range(cfg.ffm_layers))

        self.cls = nn.Parameter(torch.randn(1, 1, cfg.width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.width, cfg.heads, 4 * cfg.width, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.fusion = nn.TransformerEncoder(layer, cfg.fusion_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.num_labels)
        self.freeze()

    def freeze(self) -> None:
        """Turn off gradients for the parameter-name prefixes in ``cfg.frozen``."""
        matched = set()
        for name, param in self.named_parameters():
            hits = [p for p in self.cfg.frozen if name.startswith(p)]
            if hits:
                param.requires_grad_(False)
                matched.update(hits)
        missing = set(self.cfg.frozen) - matched
        if missing:
            raise ValueError(f"frozen prefixes {sorted(missing)} match no parameter of RFNet")

    def _image_tokens(self, images: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        order = self.cfg.image_modalities
        if self.cfg.shared_image_encoder:
            # One trunk call over all modalities at once: (M*B, 3, S, S) is faster than M calls.
            stacked = torch.cat([images[m] for m in order], dim=0)
            feats = self.image_encoder(stacked).last_hidden_state
            chunks = feats.chunk(len(order), dim=0)
        else:
            chunks = [self.image_encoders[m](images[m]).last_hidden_state for m in order]
        tokens = {}
        for i, (m, f) in enumerate(zip(order, chunks, strict=True)):
            t = self.image_proj(f.flatten(2).transpose(1, 2))  # (B, h*w, C)
            tokens[m] = t + self.image_pos + self.modality_embed[i]
        return tokens

    def forward(
        self,
        product: torch.Tensor | None = None,
        generated: torch.Tensor | None = None,
        depth: torch.Tensor | None = None,
        saliency: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Classify a batch.

        Args:
            product, generated, depth, saliency: (B, 3, S, S) float, normalised by ``Preprocess``.
            input_ids, attention_mask: (B, T) int64 caption tokens from ``Preprocess.text``.

        Returns:
            (B, 6) float logits in ``LABELS`` order.

        Raises:
            ValueError: an enabled modality is missing.
        """
        given = {"product": product, "generated": generated, "depth": depth, "saliency": saliency}
        missing = [m for m in self.cfg.image_modalities if given[m] is None]
        if "caption" in self.cfg.modalities and input_ids is None:
            missing.append("caption")
        if missing:
            raise ValueError(f"RFNet inputs missing for enabled modalities: {missing}")
        tokens = self._image_tokens({m: given[m] for m in self.cfg.image_modalities})
        batch = next(iter(tokens.values())).shape[0]

        extra: list[torch.Tensor] = []
        padding: torch.Tensor | None = None
        if "caption" in self.cfg.modalities:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            text = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            e_c = self.text_proj(text)
            padding = attention_mask == 0
            if "product" in tokens:
                for block in self.ffm:
                    tokens["product"] = block(tokens["product"], e_c, padding)
            if "product" not in tokens or self.cfg.caption_in_fusion:
                # Without the product image there is nothing to filter the caption with, so its tokens join the
                # fusion directly (an ablation the paper's Table 2 runs but does not describe).
                extra.append(e_c + self.caption_embed)

        seq = [self.cls.expand(batch, -1, -1)] + [tokens[m] for m in IMAGE_MODALITIES if m in tokens] + extra
        x = torch.cat(seq, dim=1)
        mask = None
        if extra:
            keep = torch.zeros(batch, x.shape[1] - padding.shape[1], dtype=torch.bool, device=x.device)
            mask = torch.cat([keep, padding], dim=1)
        x = self.fusion(x, src_key_padding_mask=mask)
        return self.head(self.norm(x[:, 0]))


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The (name, parameter) pairs that train, i.e. everything not frozen by ``cfg.frozen``."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
