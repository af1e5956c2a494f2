"""A job's option values come in three layers: a YAML file, ``name=value`` overrides, then flags.

    adloop refresh --config nightly.yaml max_attempts=3 guidance_scale=5 --seed 7

- ``--config FILE.yaml`` maps option names to values (``guidance_scale: 5.0``);
- a ``name=value`` argument overrides one option over the file; an option a job takes repeatedly
  (``--data``) is given as often as needed (``data=a data=b``);
- a flag on the command line wins over both.

A name is an option's name with ``_`` or ``-`` (``guidance_scale``, ``guidance-scale``) or one of its old
spellings (``out``); the options of the subcommand being run count too (``adloop synth rf1m n=100``). An
unknown name is an error that names it and lists the known ones. A value is typed by its option, the file's
and the overrides' alike: an integer option takes an integer, a switch (``--keep-loc``) true or false, an
option with choices one of them, and ``null`` (in the file) only where the option's default is none.

An argument is an override when it has the form ``name=value`` (a name of letters, digits, ``_``, ``-``, ``.``)
and is not a flag's value: ``--input date=1`` is a flag's value, and after ``--`` every argument is positional
(``adloop report -- date=1`` reads the folder ``date=1``).

Jobs with an output folder write every option's resolved value there as ``config.yaml``
(:func:`write_resolved_config`), so ``--config OUT/config.yaml`` alone repeats the run.

Like ``jobs.args``, this module is imported while a job builds its parser, so it stays light (yaml only).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from typing import Any

_OVERRIDE = re.compile(r"([A-Za-z_][\w.-]*)=(.*)", re.S)
_SWITCH = (argparse._StoreTrueAction, argparse._StoreFalseAction)
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None, known: bool = False):
    """``parser.parse_args(argv)`` (``parse_known_args`` with ``known``) over the ``--config`` file's values and
    the ``name=value`` overrides in ``argv`` (see the module doc); a bad name or value exits with status 2."""
    line = _scan(parser, list(sys.argv[1:] if argv is None else argv))
    values: dict[str, Any] = {}
    if line.config:
        values.update(_read_file(line, line.config))
    overridden: dict[str, Any] = {}
    for arg in line.overrides:
        name, _, text = arg.partition("=")
        owners = _owners_of(line, name, f"{arg}: unknown option {name!r}")
        if isinstance(owners[0][1], argparse._AppendAction):
            overridden.setdefault(owners[0][1].dest, []).append(_typed(line, owners[0][1], text, arg))
        else:
            overridden[owners[0][1].dest] = _typed(line, owners[0][1], text, arg)
    values.update(overridden)
    appended = _set_defaults(line, values)
    if known:
        args, rest = parser.parse_known_args(line.argv)
    else:
        args, rest = parser.parse_args(line.argv), []
    for dest, (value, default) in appended.items():  # the flags' list replaces the file's, not extends it
        if getattr(args, dest) is default:
            setattr(args, dest, value)
    return (args, rest) if known else args


def write_resolved_config(args: argparse.Namespace, output: str, name: str = "config.yaml") -> str:
    """Write every option's resolved value (``--config`` file, overrides, defaults and flags merged) as YAML
    under ``output`` (a folder, local or fsspec URI), so a run can be repeated with ``--config`` alone."""
    import yaml

    from cluster.storage import join, write_bytes_atomic

    values = {k: v for k, v in sorted(vars(args).items()) if k != "config"}
    path = join(output, name)
    write_bytes_atomic(path, yaml.safe_dump(values, sort_keys=True).encode())
    return path


@dataclass
class _Line:
    """A command line split into what argparse reads and what this module reads."""

    parser: argparse.ArgumentParser
    argv: list[str] = field(default_factory=list)
    """The arguments for argparse: everything but the overrides."""
    overrides: list[str] = field(default_factory=list)
    """The ``name=value`` arguments, in order."""
    config: str | None = None
    """The ``--config`` file."""
    parsers: list[argparse.ArgumentParser] = field(default_factory=list)
    """The job's parser, then the chosen subcommand's parser (if the job has subcommands)."""
    command: str | None = None
    """The chosen subcommand."""


def _scan(parser: argparse.ArgumentParser, argv: list[str]) -> _Line:
    line = _Line(parser, parsers=[parser])
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            line.argv += argv[i:]
            break
        if arg.startswith("-") and len(arg) > 1:
            flag, eq, value = arg.partition("=")
            action = _option(line.parsers, flag)
            takes_next = action is not None and action.nargs != 0 and not eq and i + 1 < len(argv)
            if takes_next:
                value = argv[i + 1]
            line.argv += argv[i : i + 1 + takes_next]
            i += 1 + takes_next
            if action is not None and action.dest == "config" and (eq or takes_next):
                line.config = value
            continue
        if _OVERRIDE.fullmatch(arg):
            line.overrides.append(arg)
        else:
            line.argv.append(arg)
            sub = _subcommands(line.parsers[-1])
            if line.command is None and sub is not None and arg in sub.choices:
                line.command = arg
                line.parsers.append(sub.choices[arg])
        i += 1
    return line


def _option(parsers: list[argparse.ArgumentParser], flag: str) -> argparse.Action | None:
    """The action ``flag`` names, as argparse resolves it: in the subcommand's parser once one is chosen (it
    reads the rest of the line), exactly or as the unique prefix of a long flag."""
    p = parsers[-1]
    if flag in p._option_string_actions:
        return p._option_string_actions[flag]
    prefixed = {a for f, a in p._option_string_actions.items() if f.startswith(flag)}
    return prefixed.pop() if p.allow_abbrev and flag.startswith("--") and len(prefixed) == 1 else None


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _owners(line: _Line) -> dict[str, list[tuple[argparse.ArgumentParser, argparse.Action]]]:
    """Each name an option answers to (its destination and its long flags, ``-`` as ``_``) -> where it lives."""
    names: dict[str, list[tuple[argparse.ArgumentParser, argparse.Action]]] = {}
    for p in line.parsers:
        for action in p._actions:
            if action.dest in ("help", "config") or isinstance(action, argparse._SubParsersAction):
                continue
            spellings = {action.dest} | {f.lstrip("-").replace("-", "_") for f in action.option_strings}
            for name in spellings - {""}:
                names.setdefault(name, []).append((p, action))
    return names


def _owners_of(line: _Line, name: str, unknown: str) -> list[tuple[argparse.ArgumentParser, argparse.Action]]:
    names = _owners(line)
    if name.replace("-", "_") not in names:
        _refuse(line, names, unknown)
    return names[name.replace("-", "_")]


def _refuse(line: _Line, names: dict, unknown: str) -> None:
    """Exit naming what is unknown and listing the options there are (by their destination names)."""
    line.parser.error(f"{unknown}; known: {sorted({a.dest for pairs in names.values() for _, a in pairs})}")


def _read_file(line: _Line, path: str) -> dict[str, Any]:
    import yaml

    source = f"--config {path}"
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        line.parser.error(f"{source}: {err}")
    if not isinstance(data, dict):
        line.parser.error(f"{source}: expected a mapping of option names to values")
    sub = _subcommands(line.parser)
    if sub is not None and sub.dest in data:  # a resolved config names its subcommand
        command = data.pop(sub.dest)
        if line.command is None and command in sub.choices:
            line.command = command
            line.argv.append(command)  # every argument so far is the job's own, so the subcommand comes last
            line.parsers.append(sub.choices[command])
        elif command != line.command:
            line.parser.error(f"{source}: written for {sub.dest} {command!r}, not {line.command!r}")
    names = _owners(line)
    unknown = sorted(str(k) for k in data if str(k).replace("-", "_") not in names)
    if unknown:
        _refuse(line, names, f"{source}: unknown options {unknown}")
    values = {}
    for key, value in data.items():
        action = names[str(key).replace("-", "_")][0][1]
        if isinstance(action, argparse._AppendAction) and value is not None:
            items = value if isinstance(value, list) else [value]
            value = [_typed(line, action, item, source) for item in items]
        else:
            value = _typed(line, action, value, source)
        values[action.dest] = value
    return values


def _typed(line: _Line, action: argparse.Action, value: Any, where: str) -> Any:
    """``value`` (text from an override, or what YAML read) as the option's flag would have given it."""
    if value is None:
        if action.default is not None and not isinstance(action, _SWITCH):
            line.parser.error(f"{where}: {action.dest} needs a value (its default is {action.default!r})")
        return None
    if isinstance(action, _SWITCH):
        text = str(value).lower()
        if isinstance(value, bool) or text in _TRUE + _FALSE:
            return value if isinstance(value, bool) else text in _TRUE
        line.parser.error(f"{where}: {action.dest} is a switch: expected true or false, got {value!r}")
    if isinstance(value, (list, dict)):
        line.parser.error(f"{where}: {action.dest} takes a single value, got {value!r}")
    try:
        if isinstance(value, bool):  # YAML's true/false would pass as the text "True" or the integer 1
            raise TypeError
        typed = action.type(str(value)) if action.type is not None else str(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        line.parser.error(f"{where}: {action.dest} expects {_kind(action)}, got {value!r}")
    if action.choices is not None and typed not in action.choices:
        line.parser.error(f"{where}: {action.dest} must be one of {list(action.choices)}, got {typed!r}")
    return typed


def _kind(action: argparse.Action) -> str:
    return {int: "an integer", float: "a number"}.get(action.type, "text")


def _set_defaults(line: _Line, values: dict[str, Any]) -> dict[str, Any]:
    """Make ``values`` the defaults of the options they name, so flags override them; returns the values of
    repeatable options, which are set after parsing (argparse would extend a default list)."""
    names = _owners(line)
    appended = {}
    for dest, value in values.items():
        for owner, action in names[dest]:
            action.required = False
            if isinstance(action, argparse._AppendAction):
                appended[dest] = (value, action.default)  # argparse copies the default before appending a flag
                continue
            if not action.option_strings:
                action.nargs = "?"  # a positional given by the file or an override may be left off the line
            owner.set_defaults(**{dest: value})
    return appended
