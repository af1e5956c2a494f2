"""Every job takes its options from a YAML file, ``name=value`` overrides and flags (``jobs.config``).

- the layers stack: the file, then the overrides, then the flags, each winning over the one before;
- a name is checked and a value typed by the option it names, the file's and the overrides' alike, and a bad one
  is an error that names it (exit status 2), in every job;
- a ``name=value`` that is a flag's value, or comes after ``--``, stays an argument;
- repeatable options (``--data``), positionals (``report OUT``) and subcommands (``synth rf1m``) take part;
- the resolved config a job writes repeats its options with ``--config`` alone.
"""

from __future__ import annotations

import argparse

import pytest

from jobs import refresh, report, synth, train_rfft
from jobs.cli import COMMANDS, main
from jobs.config import parse, write_resolved_config
from jobs.train_rfnet import _parser as train_rfnet_parser

# The arguments that bring each job to its parser (a subcommand where it has them).
LEADING = {"synth": ["rf1m"], "review": [], "report": ["out"], "review export": ["out", "--to", "d"]}


def _synth_args(argv: list[str]) -> argparse.Namespace:
    """What ``adloop synth`` parses from ``argv``: its parser, caught as ``main`` hands it over."""
    seen = []
    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        seen.append(original(self, args, namespace))
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(SystemExit):
            synth.main(argv)
    finally:
        argparse.ArgumentParser.parse_args = original
    return seen[0]


def _error(capsys, call, *args) -> str:
    with pytest.raises(SystemExit) as exit_:
        call(*args)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_overrides_set_options_typed_by_the_option():
    args = refresh.parse_args(
        ["--input", "i", "--output", "o", "guidance_scale=5", "max-attempts=3", "keep_loc=true", "dtype=bf16"]
    )
    assert (args.guidance_scale, args.max_attempts, args.keep_loc, args.dtype) == (5.0, 3, True, "bf16")
    assert isinstance(args.guidance_scale, float) and isinstance(args.max_attempts, int)
    # an old spelling names its option; the required flags may come from overrides as well
    args = refresh.parse_args(["input=i", "out=o", "mix_caption=no"])
    assert (args.input, args.output, args.mix_caption) == ("i", "o", False)


def test_the_file_then_the_overrides_then_the_flags(tmp_path):
    cfg = tmp_path / "nightly.yaml"
    cfg.write_text("input: skus.jsonl\noutput: out\nguidance-scale: 5.0\nmax_attempts: 3\nseed: 1\n")
    args = refresh.parse_args(["--config", str(cfg), "max_attempts=4", "seed=2", "--seed", "3"])
    assert (args.input, args.guidance_scale, args.max_attempts, args.seed) == ("skus.jsonl", 5.0, 4, 3)


@pytest.mark.parametrize("job", [*COMMANDS, "review export"])  # review export has a parser of its own
def test_every_job_refuses_an_unknown_name_naming_it(capsys, job):
    err = _error(capsys, main, [*job.split(), *LEADING.get(job, []), "no_such_option=1"])
    assert "unknown option 'no_such_option'; known: [" in err


@pytest.mark.parametrize(
    "override, message",
    [
        ("max_attempts=three", "max_attempts expects an integer, got 'three'"),
        ("guidance_scale=high", "guidance_scale expects a number, got 'high'"),
        ("dtype=fp8", "dtype must be one of ['fp32', 'bf16', 'fp16'], got 'fp8'"),
        ("keep_loc=maybe", "keep_loc is a switch: expected true or false, got 'maybe'"),
    ],
)
def test_an_override_of_the_wrong_type_is_an_error_naming_it(capsys, override, message):
    err = _error(capsys, refresh.parse_args, ["--input", "i", "--output", "o", override])
    assert f"{override}: {message}" in err


@pytest.mark.parametrize(
    "text, message",
    [
        ("guidance_scal: 5\n", "unknown options ['guidance_scal']"),
        ("max_attempts: 3.5\n", "max_attempts expects an integer, got 3.5"),
        ("keep_loc: 2\n", "keep_loc is a switch: expected true or false, got 2"),
        ("seed: null\n", "seed needs a value (its default is 0)"),
        ("input: [a, b]\n", "input takes a single value, got ['a', 'b']"),
        ("device: true\n", "device expects text, got True"),
        ("- input\n", "expected a mapping of option names to values"),
    ],
)
def test_a_bad_file_is_an_error_naming_the_option(tmp_path, capsys, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    err = _error(capsys, refresh.parse_args, ["--config", str(tmp_path / "bad.yaml"), "--input", "i", "--output", "o"])
    assert f"--config {tmp_path / 'bad.yaml'}: {message}" in err


def test_a_flags_value_and_what_follows_dashdash_stay_arguments():
    args = refresh.parse_args(["--input", "date=1", "--output=run=2", "--seed", "4"])
    assert (args.input, args.output, args.seed) == ("date=1", "run=2", 4)
    assert report.parse_args(["--", "date=1"]).output == "date=1"
    # train-rfft's own --set FIELD=VALUE (RFFTConfig fields) is a flag's value, not an override
    args = train_rfft.parse_args(["--train-products", "p", "--output", "o", "--set", "lr=1e-4", "beta=2"])
    assert (args.set, args.beta) == (["lr=1e-4"], 2.0)


def test_a_repeatable_option_takes_a_list_and_flags_replace_it(tmp_path):
    assert parse(train_rfnet_parser(), ["data=a", "data=b", "output=o"]).data == ["a", "b"]
    (tmp_path / "t.yaml").write_text("data: sets/one\noutput: o\n")
    assert parse(train_rfnet_parser(), ["--config", str(tmp_path / "t.yaml")]).data == ["sets/one"]
    (tmp_path / "t.yaml").write_text("data: [sets/one, sets/two]\noutput: o\n")
    assert parse(train_rfnet_parser(), ["--config", str(tmp_path / "t.yaml")]).data == ["sets/one", "sets/two"]
    args = parse(train_rfnet_parser(), ["--config", str(tmp_path / "t.yaml"), "--data", "c"])
    assert args.data == ["c"]
    args = train_rfft.parse_args(["--train-products", "p", "--output", "o", "set=lr=1e-4", "set=beta=2"])
    assert args.set == ["lr=1e-4", "beta=2"]


def test_a_positional_may_come_from_the_file_or_an_override(tmp_path):
    assert report.parse_args(["output=runs/night", "gallery=3"]).output == "runs/night"
    (tmp_path / "r.yaml").write_text("output: runs/night\n")
    args = report.parse_args(["--config", str(tmp_path / "r.yaml"), "runs/day"])
    assert args.output == "runs/day"


def test_a_subcommands_options_are_read_for_that_subcommand(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text("n: 12\noutput: data\nrender_size: 32\n")
    args = _synth_args(["rf1m", "--config", str(tmp_path / "s.yaml"), "toy_maps=true"])
    assert (args.kind, args.n, args.output, args.render_size, args.toy_maps) == ("rf1m", 12, "data", 32, True)
    # scenes has a --prompts, rf1m has not
    assert "prompts=p: unknown option 'prompts'" in _error(capsys, synth.main, ["rf1m", "n=1", "prompts=p"])


@pytest.mark.parametrize(
    "job, argv",
    [
        ("refresh", ["--input", "i", "--output", "o", "guidance_scale=5", "--max-attempts", "4", "keep_loc=1"]),
        ("synth", ["scenes", "n=5", "--output", "o", "render_size=96"]),
        ("train-rfnet", ["--data", "a", "--data", "b", "--output", "o", "epochs=2"]),
    ],
)
def test_the_resolved_config_repeats_the_options_alone(tmp_path, capsys, job, argv):
    read = {
        "refresh": refresh.parse_args,
        "synth": _synth_args,
        "train-rfnet": lambda a: parse(train_rfnet_parser(), a),
    }[job]
    args = read(argv)
    written = write_resolved_config(args, str(tmp_path / "run"))
    again = read(["--config", written] if job != "synth" else [args.kind, "--config", written])
    assert {**vars(again), "config": None} == {**vars(args), "config": None}
    if job == "synth":  # the file names its subcommand: it may stand in for it, and refuses another
        assert vars(_synth_args(["--config", written])) == {**vars(args), "config": None}
        err = _error(capsys, synth.main, ["rf1m", "--config", written])
        assert "written for kind 'scenes', not 'rf1m'" in err


def test_a_job_writes_its_config_next_to_its_outputs_and_that_file_alone_repeats_the_run(tmp_path):
    """A real run (synth scenes, 3 tiny scenes): OUT/config.yaml holds every option, and ``--config`` with it
    (the output moved by an override) writes the same data."""
    import pyarrow.parquet as pq
    import yaml

    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["synth", "scenes", "n=3", "--output", str(first), "--seed", "1", "render_size=32"]) == 0
    written = yaml.safe_load((first / "config.yaml").read_text())
    assert written == {"kind": "scenes", "n": 3, "output": str(first), "prompts": None, "render_size": 32, "seed": 1}
    assert main(["synth", "--config", str(first / "config.yaml"), f"output={again}"]) == 0
    assert yaml.safe_load((again / "config.yaml").read_text()) == {**written, "output": str(again)}
    tables = [pq.read_table(sorted(out.glob("*.parquet"))[0]) for out in (first, again)]
    assert tables[0].num_rows == 3 and tables[0].equals(tables[1])
