"""``adloop generate`` end to end on the bundled samples plus bad inputs, in-process."""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from engine.samples import SAMPLES, SAMPLES_DIR
from jobs import cli


def test_generate_writes_one_line_per_sku_and_an_image_per_good_one(tmp_path):
    src = tmp_path / "in"
    shutil.copytree(SAMPLES_DIR, src)
    (src / "zero.png").write_bytes(b"")
    (src / "garbage.jpg").write_bytes(b"not an image")
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(src / "transparent.png")
    out = tmp_path / "out"
    assert cli.main(["generate", "--input", str(src), "--output", str(out), "--size", "64", "--steps", "2"]) == 0
    lines = [json.loads(line) for line in (out / "generate.jsonl").read_text().splitlines()]
    by_id = {line["sku_id"]: line for line in lines}
    assert len(lines) == len(by_id) == len(SAMPLES) + 3
    for sku in SAMPLES:
        assert by_id[sku]["status"] == "ok"
        img = np.array(Image.open(by_id[sku]["image_path"]))
        assert img.shape == (64, 64, 3)
    assert "empty_file" in by_id["zero"]["error"] and "zero.png" in by_id["zero"]["error"]
    assert "undecodable" in by_id["garbage"]["error"]
    assert "no_product_pixels" in by_id["transparent"]["error"]


def test_cli_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    assert "generate" in capsys.readouterr().out
    assert cli.main(["no-such-command"]) == 2
