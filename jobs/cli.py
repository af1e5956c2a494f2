"""The ``adloop`` console script: one subcommand per job, each delegating to ``jobs.<module>.main``."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help). Modules are imported only when their command runs, so
# ``adloop --help`` is instant and one job's heavy imports never slow another.
COMMANDS: dict[str, tuple[str, str]] = {
    "refresh": ("jobs.refresh", "the catalog refresh: generate, score, regenerate rejects; one final row per SKU"),
    "report": ("jobs.report", "rebuild OUT/report.html, the run report, from a refresh's outputs"),
    "generate": ("jobs.generate", "one attempt per product, no scoring: a quick look at the generator"),
    "train-rfft": ("jobs.train_rfft", "reward fine-tuning of the ControlNet with RFNet feedback (Ray Train)"),
    "eval-generator": (
        "jobs.eval_generator",
        "available rate, attempts and diversity of a generator on held-out products",
    ),
    "train-generator": (
        "jobs.train_generator",
        "train the toy generator (VAE, text encoder, UNet, ControlNet) on Ray Train",
    ),
    "synth": ("jobs.synth", "write a synthetic RF1M-format dataset with programmatic defects"),
    "train-rfnet": ("jobs.train_rfnet", "train RFNet under Ray Train (DDP or DeepSpeed), write metrics.json"),
    "train-maps": ("jobs.train_maps", "train the toy depth and saliency models on synthetic scenes (Ray Train)"),
    "review": ("jobs.review", "a web page to review the needs_review queue and audit accepted SKUs; export labels"),
    "serve": ("jobs.serve", "the online RFNet scorer over HTTP (Ray Serve): /v1/score, /healthz, /readyz"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: adloop COMMAND [options]   (adloop COMMAND --help for a command's options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"adloop: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
