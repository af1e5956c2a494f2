"""RFNet model, preprocessing, checkpoint and scorer: properties on the tiny preset (CPU, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rfnet
from rfnet.config import LABELS, MODALITIES, RFNetConfig
from rfnet.text import tiny_tokenizer

CAPTIONS = ["a small red mug, real size: small", "a large blue sofa, real size: large", "a medium green lamp"]


def _inputs(b: int = 3, h: int = 48, w: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    product = rng.integers(0, 256, (b, h, w, 4), dtype=np.uint8)
    generated = rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)
    return product, generated, [CAPTIONS[i % len(CAPTIONS)] for i in range(b)]


def _tensor_batch(prep: rfnet.Preprocess, b: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    size = prep.size
    return prep(
        product_rgba=torch.rand(b, 4, size, size, generator=g),
        generated=torch.rand(b, 3, size, size, generator=g),
        depth=torch.rand(b, 1, size, size, generator=g),
        saliency=torch.rand(b, 1, size, size, generator=g),
        captions=[CAPTIONS[i % 3] for i in range(b)],
    )


def test_forward_shape_and_label_order():
    model, prep = rfnet.load("tiny")
    logits = model(**_tensor_batch(prep))
    assert logits.shape == (3, len(LABELS)) and logits.dtype == torch.float32
    assert LABELS[0] == "Available" and len(set(LABELS)) == 6


@pytest.mark.parametrize("dropped", MODALITIES)
def test_each_modality_can_be_switched_off(dropped):
    cfg = RFNetConfig(modalities=tuple(m for m in MODALITIES if m != dropped))
    model, prep = rfnet.build(cfg)
    batch = _tensor_batch(prep)
    assert dropped not in batch or dropped == "caption"
    assert ("input_ids" in batch) == (dropped != "caption")
    assert model(**batch).shape == (3, 6)
    # the switched-off modality has no parameters at all
    names = [n for n, _ in model.named_parameters()]
    if dropped == "caption":
        assert not any(n.startswith(("text_encoder", "ffm")) for n in names)
    if dropped == "product":
        assert not any(n.startswith("ffm") for n in names)


def test_paper_exact_fusion_of_filtered_product_tokens_only():
    model, prep = rfnet.build(RFNetConfig(caption_in_fusion=False))
    assert not hasattr(model, "caption_embed")
    batch = _tensor_batch(prep)
    with torch.no_grad():
        out = model(**batch)
        other = dict(batch, input_ids=torch.full_like(batch["input_ids"], 5))
        # the caption still matters, through the Feature Filter Module
        assert not torch.allclose(out, model(**other))
    assert out.shape == (3, 6)


def test_missing_enabled_modality_is_an_error():
    model, prep = rfnet.load("tiny")
    batch = _tensor_batch(prep)
    batch.pop("depth")
    with pytest.raises(ValueError, match="depth"):
        model(**batch)
    with pytest.raises(ValueError, match="saliency"):
        prep(product_rgba=torch.rand(1, 4, 8, 8), generated=torch.rand(1, 3, 8, 8), depth=torch.rand(1, 1, 8, 8))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        RFNetConfig(modalities=("caption",))
    with pytest.raises(ValueError):
        RFNetConfig(modalities=("generated", "thermal"))
    with pytest.raises(ValueError):
        RFNetConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="match no parameter"):
        rfnet.build(RFNetConfig(frozen=("no_such_module",)))


def test_one_step_changes_every_trainable_parameter_and_no_frozen_one():
    cfg = RFNetConfig(frozen=("text_encoder.embeddings", "image_encoder.embedder"))
    model, prep = rfnet.build(cfg)
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and trainable
    assert all(n.startswith(cfg.frozen) for n in frozen)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    loss = torch.nn.functional.cross_entropy(model(**_tensor_batch(prep, b=6)), torch.arange(6))
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not no_grad, f"trainable parameters without gradient: {no_grad}"
    opt.step()
    params = dict(model.named_parameters())
    unchanged = [n for n, v in trainable.items() if torch.equal(params[n], v)]
    assert not unchanged, f"trainable parameters unchanged by a step: {unchanged}"
    moved = [n for n, v in frozen.items() if not torch.equal(params[n], v)]
    assert not moved, f"frozen parameters changed: {moved}"


def test_save_then_load_gives_identical_outputs(tmp_path):
    model, prep = rfnet.build(RFNetConfig(), seed=3)
    model.eval()
    batch = _tensor_batch(prep)
    with torch.no_grad():
        before = model(**batch)
    rfnet.save(model, str(tmp_path / "ck"), threshold=0.7)
    loaded, prep2 = rfnet.load(str(tmp_path / "ck"))
    assert not loaded.training
    with torch.no_grad():
        after = loaded(**_tensor_batch(prep2))
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    scorer = rfnet.Scorer(str(tmp_path / "ck"), device="cpu")
    assert scorer.threshold == pytest.approx(0.7)
    assert scorer.model_id.startswith("ck-") and len(scorer.model_id) == len("ck-") + 10
    assert rfnet.Scorer(str(tmp_path / "ck"), device="cpu", threshold=0.2).threshold == pytest.approx(0.2)


def test_checkpoint_from_local_pretrained_encoders_is_self_contained(tmp_path):
    from transformers import ResNetConfig, ResNetModel, RobertaConfig, RobertaModel

    ResNetModel(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ).save_pretrained(tmp_path / "resnet")
    tok = tiny_tokenizer()
    RobertaModel(
        RobertaConfig(
            vocab_size=len(tok),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            max_position_embeddings=40,
        ),
        add_pooling_layer=False,
    ).save_pretrained(tmp_path / "roberta")
    tok.save_pretrained(tmp_path / "tok")
    cfg = RFNetConfig(
        image_encoder_path=str(tmp_path / "resnet"),
        text_encoder_path=str(tmp_path / "roberta"),
        tokenizer=str(tmp_path / "tok"),
    )
    model, prep = rfnet.build(cfg)
    assert model.image_encoder.config.hidden_sizes == [8, 16]
    model.eval()
    with torch.no_grad():
        before = model(**_tensor_batch(prep))
    rfnet.save(model, str(tmp_path / "ck"))
    for sub in ("resnet", "roberta", "tok"):  # the checkpoint must not need the folders it started from
        for f in (tmp_path / sub).iterdir():
            f.unlink()
    loaded, prep2 = rfnet.load(str(tmp_path / "ck"))
    with torch.no_grad():
        torch.testing.assert_close(before, loaded(**_tensor_batch(prep2)), rtol=0, atol=0)


def test_load_rejects_a_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        rfnet.load(str(tmp_path))


def test_set_threshold_changes_only_the_stored_threshold(tmp_path):
    from rfnet.checkpoint import read_meta, save, set_threshold, threshold_of

    model, _ = rfnet.load("tiny")
    save(model, str(tmp_path), threshold=0.5)
    weights = (tmp_path / "model.safetensors").read_bytes()
    config = read_meta(str(tmp_path))["rfnet"]
    set_threshold(str(tmp_path), 0.83)
    assert threshold_of(str(tmp_path)) == 0.83
    assert rfnet.Scorer(str(tmp_path), device="cpu").threshold == 0.83
    assert (tmp_path / "model.safetensors").read_bytes() == weights and read_meta(str(tmp_path))["rfnet"] == config
    with pytest.raises(ValueError, match="threshold must be in"):
        set_threshold(str(tmp_path), 1.5)
    assert threshold_of(str(tmp_path)) == 0.83


def test_scorer_matches_model_in_eval_mode():
    scorer = rfnet.Scorer("tiny", device="cpu")
    product, generated, captions = _inputs()
    result = scorer.score(product, generated, captions)

    model, prep = rfnet.load("tiny")
    depth, saliency = rfnet.load_depth("tiny"), rfnet.load_saliency("tiny")
    g = torch.from_numpy(generated).permute(0, 3, 1, 2).float() / 255
    p = torch.from_numpy(product).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        logits = model(**prep(product_rgba=p, generated=g, depth=depth(g), saliency=saliency(g), captions=captions))
    probs = torch.softmax(logits, -1).numpy()
    np.testing.assert_allclose(result.probabilities, probs, rtol=1e-5, atol=1e-6)
    assert result.probabilities.dtype == np.float32 and result.p_available.shape == (3,)
    np.testing.assert_allclose(result.probabilities.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(result.accepted, result.p_available >= scorer.threshold)
    assert result.defect == [LABELS[1 + i] for i in probs[:, 1:].argmax(1)]
    assert scorer.model_id == "tiny" and scorer.threshold == 0.5


def test_scorer_batch_equals_single_calls_and_any_size():
    scorer = rfnet.Scorer("tiny", device="cpu")
    product, generated, captions = _inputs(b=4, h=37, w=53)
    batch = scorer.score(product, generated, captions)
    singles = np.concatenate(
        [scorer.score(product[i : i + 1], generated[i : i + 1], captions[i : i + 1]).probabilities for i in range(4)]
    )
    np.testing.assert_allclose(batch.probabilities, singles, rtol=1e-4, atol=1e-6)
    assert scorer.score(product[:0], generated[:0], []).probabilities.shape == (0, 6)
    with pytest.raises(ValueError, match="batch sizes"):
        scorer.score(product, generated, captions[:2])


def test_threshold_decides_acceptance():
    product, generated, captions = _inputs()
    assert rfnet.Scorer("tiny", device="cpu", threshold=0.0).score(product, generated, captions).accepted.all()
    assert not rfnet.Scorer("tiny", device="cpu", threshold=1.0).score(product, generated, captions).accepted.any()


def test_reward_path_is_differentiable_in_the_generated_image_only():
    scorer = rfnet.Scorer("tiny", device="cpu")
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    product = torch.rand(2, 4, 64, 64)
    logp = scorer.logits(product, images, CAPTIONS[:2]).log_softmax(-1)[:, 0]
    logp.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert scorer.depth(images).requires_grad is False and scorer.saliency(images).requires_grad is False


def test_preprocess_constants_and_ranges():
    _, prep = rfnet.load("tiny")
    white = torch.ones(1, 3, 10, 10)
    out = prep.image(white)
    assert out.shape == (1, 3, 64, 64)
    torch.testing.assert_close(
        out[0, :, 0, 0], (1 - torch.tensor(rfnet.preprocess.IMAGE_MEAN)) / torch.tensor(rfnet.preprocess.IMAGE_STD)
    )
    # a fully transparent product is the white background, whatever its colour channels say
    transparent = torch.cat([torch.zeros(1, 3, 10, 10), torch.zeros(1, 1, 10, 10)], 1)
    torch.testing.assert_close(prep.product(transparent), out)
    ids = prep.text(["a red mug", "zzz unknownword"])
    assert ids["input_ids"].shape == (2, 32) and ids["attention_mask"][0].sum() == 5
    assert (ids["input_ids"][1, 1:3] == prep.tokenizer.unk_token_id).all()


def test_depth_and_saliency_maps():
    images = torch.rand(2, 3, 40, 56)
    for estimator in (rfnet.load_depth("tiny"), rfnet.load_saliency("tiny")):
        m = estimator(images)
        assert m.shape == (2, 1, 40, 56) and m.min() >= 0 and m.max() <= 1
        torch.testing.assert_close(m, estimator(images))  # deterministic, eval mode
        estimator.train()
        assert not estimator.training


def test_saliency_save_load_roundtrip(tmp_path):
    from rfnet.saliency import SaliencyConfig, U2NetStyle, save_saliency

    net = U2NetStyle(SaliencyConfig(heights=(3, 2), mid_channels=(4, 4), out_channels=(4, 8), input_size=32))
    save_saliency(net, str(tmp_path / "sal"))
    loaded = rfnet.load_saliency(str(tmp_path / "sal"))
    x = torch.rand(1, 3, 32, 32)
    ref = rfnet.saliency.SaliencyEstimator(net, 32)
    torch.testing.assert_close(loaded(x), ref(x))
    with pytest.raises(FileNotFoundError):
        rfnet.load_saliency(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError):
        rfnet.load_depth(str(tmp_path / "nothing"))
