"""``cluster.paths.checked_path``: the one checker of the local paths jobs are given."""

from __future__ import annotations

import pytest

from cluster.paths import ModelPathError, checked_path


def test_presets_pass_and_local_paths_come_back_absolute(tmp_path, monkeypatch):
    (tmp_path / "cn").mkdir()
    (tmp_path / "cn" / "config.json").write_text("{}")
    (tmp_path / "lora.safetensors").write_bytes(b"0")
    monkeypatch.chdir(tmp_path)
    assert checked_path("tiny", "depth model folder", presets=("tiny", "paper")) == "tiny"
    assert checked_path("cn", "ControlNet folder", inside="config.json") == str(tmp_path / "cn")
    assert checked_path("lora.safetensors", "LoRA file", suffixes=(".safetensors",)) == str(
        tmp_path / "lora.safetensors"
    )
    assert checked_path("s3://bucket/data", "data", required=False) == "s3://bucket/data"


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        ("missing", {}, "thing not found: missing does not exist"),
        ("missing", {"presets": ("tiny",)}, "expected 'tiny' or a path"),
        ("file.txt", {"folder": True}, "must be a folder"),
        ("file.txt", {"inside": "config.json"}, r"must be a folder \(with config.json\)"),
        ("empty", {"inside": "config.json"}, "is not a thing: expected config.json inside it"),
        ("file.txt", {"suffixes": (".safetensors",)}, "must be a .safetensors file"),
    ],
)
def test_wrong_paths_are_named_with_what_was_expected(tmp_path, monkeypatch, value, kwargs, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelPathError, match=message):
        checked_path(value, "thing", **kwargs)


def test_resolve_joins_relative_paths_and_keeps_absolute_ones_and_uris():
    from cluster.storage import is_relative, resolve

    assert resolve("/data/out", "images/a.png") == "/data/out/images/a.png"
    assert resolve("s3://bucket/out", "images/a.png") == "s3://bucket/out/images/a.png"
    assert resolve("/data/out", "/elsewhere/a.png") == "/elsewhere/a.png"
    assert resolve("/data/out", "gs://b/a.png") == "gs://b/a.png"
    assert is_relative("images/a.png") and not is_relative("/a.png") and not is_relative("memory://x/a.png")
