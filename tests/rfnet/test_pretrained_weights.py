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


# The published config.json of each model, field by field (their hub pages), and the head each checkpoint is
# released with: roberta-base is a RobertaForMaskedLM (``lm_head.*``); hfl/chinese-roberta-wwm-ext is a BERT
# whose checkpoint carries the pretraining heads (``cls.predictions.*``, ``cls.seq_relationship.*``) and a pooler.
ROBERTA_BASE = {"architectures": ["RobertaForMaskedLM"], "attention_probs_dropout_prob": 0.1, "bos_token_id": 0,
                "eos_token_id": 2, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
                "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
                "max_position_embeddings": 514, "model_type": "roberta", "num_attention_heads": 12,
                "num_hidden_layers": 12, "pad_token_id": 1, "type_vocab_size": 1, "vocab_size": 50265}  # fmt: skip
CHINESE_ROBERTA = {"architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1, "bos_token_id": 0,
                   "directionality": "bidi", "eos_token_id": 2, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
                   "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
                   "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
                   "num_attention_heads": 12, "num_hidden_layers": 12, "output_past": True, "pad_token_id": 0,
                   "pooler_fc_size": 768, "pooler_num_attention_heads": 12, "pooler_num_fc_layers": 3,
                   "pooler_size_per_head": 128, "pooler_type": "first_token_transform", "type_vocab_size": 2,
                   "vocab_size": 21128}  # fmt: skip


@pytest.mark.parametrize("published", ["roberta-base", "chinese-roberta-wwm-ext"])
def test_published_checkpoint_layouts_load_every_encoder_weight(tmp_path, published):
    """The real configs, saved in the layout they are published in (a pretraining head beside the encoder): every
    encoder tensor of the file is loaded as it is, no encoder parameter is left at its random init, and only the
    heads and pooler RFNet never runs are left over."""
    from transformers import BertForPreTraining, RobertaForMaskedLM

    folder = str(tmp_path / published)
    torch.manual_seed(4)
    if published == "roberta-base":
        RobertaForMaskedLM(RobertaConfig(**ROBERTA_BASE)).save_pretrained(folder)
        prefix, cfg = "roberta.", preset("tiny").replace(text_encoder_path=folder)
    else:
        BertForPreTraining(BertConfig(**CHINESE_ROBERTA)).save_pretrained(folder)
        with open(os.path.join(folder, "vocab.txt"), "w") as f:  # 21,128 entries, as the published vocab.txt
            f.write("\n".join(VOCAB + [f"[unused{i}]" for i in range(21128 - len(VOCAB))]) + "\n")
        BertTokenizer(os.path.join(folder, "vocab.txt")).save_pretrained(folder)
        prefix, cfg = "bert.", _cfg(folder)
    saved = load_file(os.path.join(folder, "model.safetensors"))
    assert any(not k.startswith(prefix) for k in saved)  # the head is in the file
    encoder = {k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix) and ".pooler." not in k}

    model, _ = build(cfg)
    loaded = model.text_encoder.state_dict()
    assert type(model.text_encoder) is (RobertaModel if published == "roberta-base" else BertModel)
    assert set(encoder) <= set(loaded) and all(torch.equal(loaded[k], v) for k, v in encoder.items())
    assert {name for name, _ in model.text_encoder.named_parameters()} <= set(encoder)  # none newly initialised
    left_over = {k for k in saved if not k.startswith(prefix) or ".pooler." in k}
    assert left_over and all(k.startswith(("lm_head.", "cls.")) or ".pooler." in k for k in left_over)
