"""Every job's options come from one set of declarations (``jobs.args``): one name, default and help each.

- every option of every job was added from a declaration (an ``Option``);
- a flag maps to exactly one declaration across all jobs, aliases included: no flag is spelled two ways,
  and no spelling means two things;
- a flag that several jobs share is one of the module-level declarations in ``jobs.args``, so its default
  appears once;
- an option that sets a field of the job's config defaults to that field's default (or to none, and the job
  then takes the field's), so the command line and the library agree;
- the spellings that used to drift (``--out``/``--output``, ``--guidance``/``--guidance-scale``,
  ``--address``/``--ray-address``) are one option, and the generator's defaults (canvas, steps) resolve the
  same in every job.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections import defaultdict

import pytest

from jobs import args as opts
from jobs.cli import COMMANDS, main

SHARED = {id(v) for v in vars(opts).values() if isinstance(v, opts.Option)}
# Every job, and the subcommand a job parses with a parser of its own (review export); the other
# subcommands (synth rf1m, synth scenes) are subparsers of their job's parser, reached through it.
INVOCATIONS = [*COMMANDS, "review export"]


def _parsers(job: str) -> list[argparse.ArgumentParser]:
    seen: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_known_args

    def capture(self, args=None, namespace=None):
        if all(p is not self for p in seen):
            seen.append(self)
        return original(self, args, namespace)

    argparse.ArgumentParser.parse_known_args = capture
    try:
        with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit):
            main([*job.split(), "--help"])
    finally:
        argparse.ArgumentParser.parse_known_args = original
    return seen


def _actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)
            continue
        yield action


@pytest.fixture(scope="module")
def declared() -> dict[str, dict[str, argparse.Action]]:
    """job (or "job subcommand") -> flag -> action, over every parser it builds."""
    return {
        job: {f: a for p in _parsers(job) for a in _actions(p) for f in a.option_strings or [a.dest]}
        for job in INVOCATIONS
    }


def test_every_option_of_every_job_comes_from_a_declaration(declared):
    loose = [
        f"{job} {flag}"
        for job, flags in declared.items()
        for flag, a in flags.items()
        if not hasattr(a, "declaration")
    ]
    assert not loose, f"options added without a declaration (use jobs.args.add or an Option): {loose}"


def test_a_flag_has_one_declaration_across_jobs_and_shared_flags_are_declared_once(declared):
    by_flag: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for job, flags in declared.items():
        for flag, action in flags.items():
            by_flag[flag][id(action.declaration)].append(job)
    two_ways = {flag: list(decls.values()) for flag, decls in by_flag.items() if len(decls) > 1}
    assert not two_ways, f"flags declared more than once (with their own default and help): {two_ways}"
    shared_loose = [
        flag
        for flag, decls in by_flag.items()
        if len(next(iter(decls.values()))) > 1 and next(iter(decls)) not in SHARED
    ]
    assert not shared_loose, f"flags several jobs share must be an Option in jobs.args: {shared_loose}"


def test_a_declaration_is_one_destination_and_its_old_spellings_reach_it(declared):
    for job, flags in declared.items():
        for flag, action in flags.items():
            decl = action.declaration
            assert flag in decl.flags or not action.option_strings, (job, flag)
            assert tuple(action.option_strings) in (decl.flags, ()), (job, flag)


@pytest.mark.parametrize(
    "old, name", [("--out", "--output"), ("--guidance", "--guidance-scale"), ("--address", "--ray-address")]
)
def test_the_spellings_that_drifted_are_one_option(declared, old, name):
    jobs = [job for job, flags in declared.items() if old in flags or name in flags]
    assert jobs
    for job in jobs:
        assert declared[job][name].declaration is declared[job][old].declaration, job


def test_steps_means_denoising_steps_in_every_job(declared):
    for job, flags in declared.items():
        if "--steps" in flags:
            assert flags["--steps"].declaration is opts.STEPS, job


def test_the_generator_defaults_resolve_the_same_in_every_job():
    from jobs import eval_generator, generate, refresh, train_rfft
    from jobs.args import generator_config

    configs = {
        "refresh": refresh.build_config(refresh.parse_args(["--input", "i", "--output", "o"])).generator,
        "generate": generator_config(generate.parse_args(["--input", "i", "--output", "o"])),
        "eval-generator": generator_config(eval_generator.parse_args(["--products", "p"])),
        "train-rfft": train_rfft.build_config(
            train_rfft.parse_args(["--train-products", "p", "--output", "o"])
        ).generator,
    }
    assert len({(c.size, c.steps, c.guidance_scale) for c in configs.values()}) == 1, configs
    from rfft.config import RFFTConfig

    assert (RFFTConfig().generator.size, RFFTConfig().generator.steps) == (
        configs["refresh"].size,
        configs["refresh"].steps,
    )


def test_old_spellings_still_parse():
    from jobs import eval_generator, serve, synth, train_rfft  # noqa: F401
    from jobs.train_rfnet import _parser

    assert _parser().parse_args(["--data", "d", "--out", "o"]).output == "o"
    assert serve.parse_args(["--num-cpus", "2", "--num-gpus", "1"]).cpus_per_replica == 2.0
    assert eval_generator.parse_args(["--products", "p", "--max-attempts", "4"]).measure_attempts == 4
    old = train_rfft.parse_args(["--train-products", "p", "--output", "o", "--steps", "7", "--gen-steps", "3"])
    assert (old.max_steps, old.steps) == (7, 3)
    new = train_rfft.parse_args(["--train-products", "p", "--output", "o", "--max-steps", "7", "--steps", "3"])
    assert (new.max_steps, new.steps) == (7, 3)


# The configs each job builds, and the option names that differ from their field names.
CONFIGS = {
    "refresh": ("engine.config:RefreshConfig", "engine.config:ScorerConfig", "cluster.resources:ResourceConfig"),
    "generate": ("engine.config:GeneratorConfig",),
    "eval-generator": ("engine.config:GeneratorConfig", "engine.config:ScorerConfig"),
    "train-rfft": ("rfft.config:RFFTConfig",),
    "train-rfnet": ("rfnet.train_config:TrainConfig",),
    "train-maps": ("rfnet.maps_config:MapsTrainConfig",),
    "train-generator": ("toy.config:GeneratorTrainConfig",),
    "report": ("engine.report_config:ReportConfig",),
    "review": ("engine.review_config:ReviewConfig",),
    "review export": ("engine.review_export:ExportConfig",),
    "serve": ("engine.serve:ServeArgs",),
}
FIELD_OF = {"workers": "num_workers", "gpu": "use_gpu", "cpus_per_replica": "num_cpus", "gpus_per_replica": "num_gpus"}


def _field_defaults(spec: str) -> dict:
    import dataclasses
    import importlib

    from cluster.configs import field_default

    module, name = spec.split(":")
    cls = getattr(importlib.import_module(module), name)
    if dataclasses.is_dataclass(cls):
        return {f.name: field_default(cls, f.name) for f in dataclasses.fields(cls)}
    return {name: f.get_default(call_default_factory=True) for name, f in cls.model_fields.items()}  # pydantic


def test_a_jobs_defaults_are_its_configs_defaults(declared):
    """Where an option sets a config field, its default is the field's (or none: the job then takes the
    field's), so the command line and the library never disagree about what a run does by default."""
    assert set(CONFIGS) | {"synth"} == set(INVOCATIONS)  # synth calls functions, whose defaults are its own
    differ = []
    for job, specs in CONFIGS.items():
        defaults: dict = {}
        for spec in specs:
            defaults |= _field_defaults(spec)
        for action in declared[job].values():
            field = FIELD_OF.get(action.dest, action.dest)
            if action.default is None or field not in defaults or isinstance(defaults[field], (dict, list)):
                continue
            default = (
                ",".join(defaults[field]) if isinstance(defaults[field], tuple) else defaults[field]
            )  # comma list
            if action.default != default:
                differ.append(f"{job} {action.dest}={action.default!r}, config {field}={defaults[field]!r}")
    assert not differ, "option defaults that differ from their config's:\n" + "\n".join(differ)


# The preset names a config or a function may default to.
PRESETS = {"tiny", "paper", "toy", "sd15"}
# Where each default model is declared: the generator's preset, the tokenizer's, and every other model's
# (RFNet, depth, saliency: rfnet.config.DEFAULT_PRESET, and TOY_PRESET in the toy world; module constants).
PRESET_DEFAULTS = {"engine/config.py GeneratorConfig.base_model", "rfnet/config.py RFNetConfig.tokenizer"}


def _preset_defaults(path) -> list[str]:
    """Each default in ``path`` written as a preset name: a parameter's, a class field's, a ``default=``
    keyword's, an argument in a ``default_factory`` lambda, or a parser's ``set_defaults``."""
    import ast

    def preset(node) -> bool:
        return isinstance(node, ast.Constant) and node.value in PRESETS

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            positional = a.posonlyargs + a.args
            defaulted = positional[len(positional) - len(a.defaults) :]
            pairs = [*zip(defaulted, a.defaults, strict=True), *zip(a.kwonlyargs, a.kw_defaults, strict=True)]
            found += [f"{getattr(node, 'name', 'lambda')}({arg.arg})" for arg, d in pairs if preset(d)]
        elif isinstance(node, ast.ClassDef):
            found += [
                f"{node.name}.{s.target.id}"
                for s in node.body
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and preset(s.value)
            ]
        elif isinstance(node, ast.keyword) and node.arg == "default" and preset(node.value):
            found.append(f"default={node.value.value!r} (line {node.value.lineno})")
        elif isinstance(node, ast.keyword) and node.arg == "default_factory" and isinstance(node.value, ast.Lambda):
            found += [f"default_factory {c.value!r}" for c in ast.walk(node.value.body) if preset(c)]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "set_defaults":
            found += [f"set_defaults({k.arg}={k.value.value!r})" for k in node.keywords if preset(k.value)]
    return found


def test_each_default_model_is_declared_once():
    """``depth="tiny"`` used to be written in about ten places; now every config, option and loader that
    defaults to a model reads it from its one declaration."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = {
        f"{path.relative_to(root)} {where}"
        for package in ("cluster", "rfnet", "engine", "toy", "rfft", "jobs")
        for path in sorted((root / package).rglob("*.py"))
        for where in _preset_defaults(path)
    }
    assert found == PRESET_DEFAULTS, (
        f"preset names written as defaults outside their declaration: {found - PRESET_DEFAULTS}"
    )
