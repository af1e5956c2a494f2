"""``adloop <job> --help`` is instant, quiet and complete, for every job.

Instant: a job's parser imports no heavy library (torch, diffusers, transformers, ray, cv2, pyarrow, ...);
the job imports them once its arguments are parsed. That is checked on the modules loaded, which does not
depend on how busy the machine is; the wall time is printed for the record. Quiet: nothing on stderr (no
library warnings). Complete: every option has a help text, and every option with a default shows it.
Readable: the text is plain, with none of the docstrings' reStructuredText markup left raw.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
# Every job, then the subcommands, which a job may parse on a path of its own (review export).
INVOCATIONS = [*COMMANDS, "synth rf1m", "synth scenes", "review export"]
HEAVY = (
    "torch",
    "diffusers",
    "transformers",
    "ray",
    "cv2",
    "pyarrow",
    "accelerate",
    "peft",
    "safetensors",
    "deepspeed",
    "fastapi",
    "PIL",
)

# Runs every job's --help in one fresh interpreter and reports, per job, the heavy modules loaded so far,
# the seconds it took, each option of each parser it built (subcommands included) and the text it printed.
_PROBE = r"""
import argparse, contextlib, io, json, sys, time
from jobs import cli
from jobs.args import HelpFormatter

parsers = []
original = argparse.ArgumentParser.parse_known_args

def capture(self, args=None, namespace=None):
    if all(p is not self for p in parsers):
        parsers.append(self)
    return original(self, args, namespace)

argparse.ArgumentParser.parse_known_args = capture

def options(parser):
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += [dict(o, subcommand=name) for o in options(sub)]
            continue
        text = parser._get_formatter()._get_help_string(action) if action.help else ""
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._AppendAction))
        out.append({"option": "/".join(action.option_strings) or action.dest, "help": text, "flag": flag,
                    "has_default": action.default is not None and action.default is not argparse.SUPPRESS,
                    "formatter": isinstance(parser._get_formatter(), HelpFormatter)})
    return out

heavy_names = sys.argv[1].split(",")
report = {}
for job in sys.argv[2:]:
    parsers.clear()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as text:
        try:
            cli.main([*job.split(), "--help"])
        except SystemExit:
            pass
    seconds = time.perf_counter() - start
    heavy = sorted(m for m in heavy_names if m in sys.modules)
    report[job] = {"seconds": seconds, "heavy": heavy, "options": [o for p in parsers for o in options(p)],
                   "text": text.getvalue()}
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def probe() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(HEAVY), *INVOCATIONS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", f"--help wrote to stderr:\n{done.stderr}"
    report = json.loads(done.stdout)
    print({job: round(r["seconds"], 3) for job, r in report.items()})
    return report


@pytest.mark.parametrize("job", INVOCATIONS)
def test_help_imports_no_heavy_library(probe, job):
    # Cumulative over the jobs probed before this one, so the first job to load a library is the one named.
    assert probe[job]["heavy"] == [], f"adloop {job} --help imports {probe[job]['heavy']}"


@pytest.mark.parametrize("job", INVOCATIONS)
def test_every_option_is_explained_with_its_default(probe, job):
    options = probe[job]["options"]
    assert options, job
    assert all(o["formatter"] for o in options), f"adloop {job}: build the parser with jobs.args.job_parser"
    missing = [o["option"] for o in options if not o["help"].strip()]
    assert not missing, f"adloop {job}: options without help: {missing}"
    no_default = [o["option"] for o in options if o["has_default"] and not o["flag"] and "default" not in o["help"]]
    assert not no_default, f"adloop {job}: defaults not shown: {no_default}"


# What the job docstrings' reStructuredText looks like raw: literals, roles (:func:`x`), directives (.. note::).
RST = re.compile(r"``|:[a-z]+:`|^\s*\.\. [a-z-]+::", re.M)


@pytest.mark.parametrize("job", INVOCATIONS)
def test_help_shows_no_raw_markup(probe, job):
    text = probe[job]["text"]
    assert f"usage: adloop {job}" in text, text[:200]
    raw = RST.findall(text)
    assert not raw, f"adloop {job} --help shows raw markup {raw}:\n{text}"
