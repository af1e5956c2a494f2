"""Model files that do not fit fail at once, naming the file and what was expected: an RFNet checkpoint whose
weights, config or labels differ, a saliency folder or a depth folder that is not what it claims, and, through
``adloop train-rfnet``, a caption encoder of an unsupported architecture (a one-line error, exit code 2, no
traceback, before any data is read). The U^2-Net and encoder-folder cases are in their own test files."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import rfnet
from rfnet.config import preset
from rfnet.weights import PretrainedWeightsError


@pytest.fixture
def checkpoint(tmp_path) -> str:
    folder = str(tmp_path / "ckpt")
    model, _ = rfnet.build(preset("tiny").replace(image_size=32))
    rfnet.save(model, folder)
    return folder


def _edit_json(path: str, edit) -> None:
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)


def test_rfnet_checkpoint_weights_that_do_not_fit(checkpoint):
    weights = os.path.join(checkpoint, "model.safetensors")
    state = load_file(weights)
    del state["head.weight"]
    state["head2.bias"] = torch.zeros(6)
    state["cls"] = torch.zeros(1, 1, 8)
    save_file(state, weights)
    with pytest.raises(PretrainedWeightsError) as err:
        rfnet.load(checkpoint)
    message = str(err.value)
    assert message.startswith(f"{weights}: the weights do not fit the RFNet of its config.json")
    assert "1 missing [head.weight]" in message and "1 unexpected [head2.bias]" in message
    assert "cls: (1, 1, 8) in the file, (1, 1, 64) expected" in message


def test_rfnet_checkpoint_config_and_labels(checkpoint):
    config = os.path.join(checkpoint, "config.json")
    _edit_json(config, lambda d: d["labels"].__setitem__(2, "Floating"))
    with pytest.raises(ValueError, match=rf"{config}: labels .*Floating.* differ"):
        rfnet.load(checkpoint)
    _edit_json(config, lambda d: (d["labels"].__setitem__(2, "Space Mismatch"), d["rfnet"].update(depthwise=True)))
    with pytest.raises(PretrainedWeightsError, match=rf"{config}: not an RFNet checkpoint config: .*'depthwise'"):
        rfnet.load(checkpoint)


def test_saliency_folder_that_is_not_one(tmp_path):
    from rfnet.saliency import SaliencyConfig, U2NetStyle, save_saliency

    folder = str(tmp_path / "sal")
    save_saliency(U2NetStyle(SaliencyConfig(heights=(3, 2), mid_channels=(4, 4), out_channels=(4, 8))), folder)
    weights = os.path.join(folder, "model.safetensors")
    state = load_file(weights)
    state.pop("fuse.weight")
    save_file(state, weights)
    with pytest.raises(PretrainedWeightsError, match=rf"{weights}: .*1 missing \[fuse.weight\]"):
        rfnet.load_saliency(folder)
    _edit_json(os.path.join(folder, "config.json"), lambda d: d.update(stages=6))
    with pytest.raises(PretrainedWeightsError, match=r"sal/config.json: not a U\^2-Net-style saliency config.*stages"):
        rfnet.load_saliency(folder)


def test_depth_folder_that_is_not_one(tmp_path):
    from transformers import BertConfig, BertModel, DPTForDepthEstimation

    from rfnet.depth import tiny_dpt_config

    bert = str(tmp_path / "bert")
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)
    ).save_pretrained(bert)
    with pytest.raises(PretrainedWeightsError, match=r"bert/config.json: model_type 'bert' is not a depth-estimation"):
        rfnet.load_depth(bert)

    dpt = str(tmp_path / "dpt")
    DPTForDepthEstimation(tiny_dpt_config()).save_pretrained(dpt)
    weights = os.path.join(dpt, "model.safetensors")
    state = load_file(weights)
    state.pop("head.head.0.weight")
    state["head.extra.weight"] = torch.zeros(2)
    save_file(state, weights)
    with pytest.raises(
        PretrainedWeightsError, match=r"dpt: .*1 missing \[head.head.0.weight\].*1 unexpected \[head.extra"
    ):
        rfnet.load_depth(dpt)


def test_train_rfnet_names_an_unsupported_caption_encoder(tmp_path, capsys):
    from transformers import GPT2Config, GPT2Model

    import jobs.train_rfnet

    gpt = str(tmp_path / "gpt2")
    GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=50)).save_pretrained(gpt)
    capsys.readouterr()  # save_pretrained's progress bar
    code = jobs.train_rfnet.main(
        ["--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "o"), "--text-encoder", gpt]
    )
    err = capsys.readouterr().err
    assert code == 2
    last = err.strip().splitlines()[-1]  # transformers may warn about the GPT-2 config before it
    assert last.startswith("adloop train-rfnet: ") and "gpt2/config.json: model_type 'gpt2'" in last
    assert "Traceback" not in err
