"""Caption encoders from local folders in their real formats: a BERT-architecture "Chinese RoBERTa" (the
usual encoder of JD's product titles) loads as the BERT it is, with every weight, and survives a checkpoint
round trip; a RoBERTa loads as a RoBERTa; an unsupported architecture or weights that do not fit fail at
once, naming the folder and the keys; a ResNet-50 classifier folder gives the image trunk every weight."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel, BertTokenizer, RobertaConfig, RobertaModel

from rfnet import build, load, save
from rfnet.config import preset
from rfnet.model import PretrainedWeightsError

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
         "max_position_embeddings": 64}  # fmt: skip
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "红", "色", "杯", "子", "a", "red", "mug", "small", ","]


def _bert_folder(path) -> str:
    folder = str(path / "chinese-roberta")
    torch.manual_seed(1)
    # What hfl/chinese-roberta-wwm-ext is: a BertModel (with its pooler) and a WordPiece vocab.txt.
    BertModel(BertConfig(vocab_size=len(VOCAB), **SMALL)).save_pretrained(folder)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("\n".join(VOCAB) + "\n")
    BertTokenizer(os.path.join(folder, "vocab.txt")).save_pretrained(folder)
    return folder


def _cfg(folder: str):
    return preset("tiny").replace(text_encoder_path=folder, tokenizer=folder, text_encoder={})


def test_bert_architecture_loads_as_bert_with_every_weight(tmp_path):
    folder = _bert_folder(tmp_path)
    model, _ = build(_cfg(folder))
    assert type(model.text_encoder) is BertModel
    saved = {k: v for k, v in load_file(os.path.join(folder, "model.safetensors")).items() if "pooler" not in k}
    loaded = model.text_encoder.state_dict()
    assert set(saved) <= set(loaded)
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())

    # The same token states as the checkpoint's own BertModel: positions start at 0, as BERT's do.
    reference = BertModel.from_pretrained(folder).eval()
    batch = BertTokenizer.from_pretrained(folder)(["红色杯子 a red mug"], return_tensors="pt")
    with torch.no_grad():
        ours = model.text_encoder.eval()(**batch).last_hidden_state
        theirs = reference(**batch).last_hidden_state
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_checkpoint_round_trip_keeps_the_architecture(tmp_path):
    folder = _bert_folder(tmp_path)
    model, _ = build(_cfg(folder))
    save(model, str(tmp_path / "ckpt"))
    reloaded, _ = load(str(tmp_path / "ckpt"))
    assert type(reloaded.text_encoder) is BertModel
    a, b = model.state_dict(), reloaded.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_roberta_loads_as_roberta(tmp_path):
    folder = str(tmp_path / "roberta")
    RobertaModel(RobertaConfig(vocab_size=50, pad_token_id=1, **SMALL), add_pooling_layer=False).save_pretrained(
        folder
    )
    model, _ = build(preset("tiny").replace(text_encoder_path=folder))
    assert type(model.text_encoder) is RobertaModel
    saved = load_file(os.path.join(folder, "model.safetensors"))
    assert all(torch.equal(model.text_encoder.state_dict()[k], v) for k, v in saved.items())


def test_unsupported_architecture_and_bad_weights_fail_with_names(tmp_path):
    from transformers import GPT2Config, GPT2Model

    gpt = str(tmp_path / "gpt2")
    GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=50)).save_pretrained(gpt)
    with pytest.raises(PretrainedWeightsError, match=r"gpt2.*config.json: model_type 'gpt2'"):
        build(preset("tiny").replace(text_encoder_path=gpt))

    folder = _bert_folder(tmp_path)
    weights = load_file(os.path.join(folder, "model.safetensors"))
    dropped = "encoder.layer.0.attention.self.query.weight"
    del weights[dropped]
    weights["extra.weight"] = torch.zeros(1)
    save_file(weights, os.path.join(folder, "model.safetensors"))
    with pytest.raises(PretrainedWeightsError, match=r"missing \[.*query\.weight.*unexpected \[extra\.weight\]"):
        build(_cfg(folder))


def test_resnet50_classifier_folder_loads_every_trunk_weight(tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    folder = str(tmp_path / "resnet-50")
    torch.manual_seed(2)
    # microsoft/resnet-50's layout: ResNetConfig's defaults are ResNet-50, saved as a classifier.
    ResNetForImageClassification(ResNetConfig()).save_pretrained(folder)
    model, _ = build(preset("tiny").replace(image_encoder_path=folder))
    saved = load_file(os.path.join(folder, "model.safetensors"))
    trunk = {f"resnet.{k}": v for k, v in model.image_encoder.state_dict().items()}
    expected = {k: v for k, v in saved.items() if k.startswith("resnet.")}
    assert set(expected) == set(trunk) and all(torch.equal(trunk[k], v) for k, v in expected.items())

    with pytest.raises(PretrainedWeightsError, match="model_type 'bert' is not a supported image trunk"):
        build(preset("tiny").replace(image_encoder_path=_bert_folder(tmp_path)))


def _trunk_folder(path, processor: dict | None) -> str:
    import json

    from transformers import ResNetConfig, ResNetModel

    folder = str(path / "trunk")
    torch.manual_seed(3)
    ResNetModel(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ).save_pretrained(folder)
    if processor is not None:
        with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
            json.dump(processor, f)
    return folder


def test_preprocessing_follows_the_image_encoders_processor_config(tmp_path):
    """Size and normalisation come from the trunk folder's preprocessor_config.json, are stored in the checkpoint,
    and are what every consumer's ``Preprocess`` (batch and online scorer, RFFT reward) applies."""
    from rfft.rewards import RFNetReward
    from rfnet import Scorer

    # A ViT-style processor: square size, its own statistics.
    folder = _trunk_folder(tmp_path, {"size": {"height": 48, "width": 48}, "image_mean": [0.5, 0.4, 0.3],
                                      "image_std": [0.25, 0.2, 0.1], "do_normalize": True})  # fmt: skip
    model, prep = build(preset("tiny").replace(image_encoder_path=folder, image_size=None))
    assert (prep.size, prep.mean, prep.std) == (48, (0.5, 0.4, 0.3), (0.25, 0.2, 0.1))
    assert model.cfg.image_size == 48
    white = prep.image(torch.ones(1, 3, 20, 30))
    expected = (1 - torch.tensor([0.5, 0.4, 0.3])) / torch.tensor([0.25, 0.2, 0.1])
    assert white.shape == (1, 3, 48, 48) and torch.allclose(white[0, :, 0, 0], expected)

    ckpt = str(tmp_path / "ckpt")
    save(model, ckpt)
    for consumer in (load(ckpt)[1], Scorer(ckpt).preprocess, RFNetReward(ckpt, "cpu").scorer.preprocess):
        assert (consumer.size, consumer.mean, consumer.std) == (48, (0.5, 0.4, 0.3), (0.25, 0.2, 0.1))

    # An explicit size wins over the folder's; microsoft/resnet-50's processor (shortest_edge) gives 224.
    _, prep = build(preset("tiny").replace(image_encoder_path=folder, image_size=32))
    assert prep.size == 32 and prep.mean == (0.5, 0.4, 0.3)
    resnet = _trunk_folder(tmp_path / "r50", {"size": {"shortest_edge": 224}, "crop_pct": 0.875,
                                             "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]})  # fmt: skip
    from rfnet.preprocess import resolve_inputs

    assert resolve_inputs(preset("tiny").replace(image_encoder_path=resnet, image_size=None)).image_size == 224
    # Without a processor config the folder gives no size: an open size fails, naming the file it looked for.
    bare = _trunk_folder(tmp_path / "bare", None)
    with pytest.raises(ValueError, match=r"bare/trunk/preprocessor_config.json: no input size"):
        build(preset("tiny").replace(image_encoder_path=bare, image_size=None))
    _, prep = build(preset("tiny").replace(image_encoder_path=bare))
    assert prep.mean == (0.485, 0.456, 0.406)  # ImageNet's, as before
