"""The ``igw`` command: one entry point, one subcommand per job.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int`` (or ``async`` work wrapped by it); this file only wires them, importing
a module when its subcommand is chosen so ``igw --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from igw import __version__

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": (
        "igw.gateway.command",
        "standalone OpenAI-compatible gateway (add --sim N for built-in simulated replicas)",
    ),
    "epp": ("igw.extproc.command", "Envoy ext_proc endpoint picker (drop-in for the GIE EPP)"),
    "bbr": ("igw.extproc.bbr_command", "body-based routing ext_proc: body model -> header"),
    "sim": ("igw.sim.command", "vLLM-compatible model-server simulator (N replicas)"),
    "bench": ("igw.bench.command", "compare routing policies on a simulated fleet; core benches"),
    "version": ("igw.cli", "print the version"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="igw",
        description=(
            "igw routes LLM requests to the best model-server replica: prefix-cache, load and "
            "LoRA aware. Run `igw serve --sim 4` for a complete local gateway with simulated "
            "replicas, or `igw epp` as an Envoy ext_proc endpoint picker."
        ),
    )
    parser.add_argument("--version", action="version", version=f"igw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _load_subcommand(name: str):
    module_name, _ = SUBCOMMANDS[name]
    return importlib.import_module(module_name)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        args = parser.parse_args(argv)  # handles --help / --version / unknown commands
        parser.print_help()
        return 0 if args.command is None and not argv else 2
    name, rest = argv[0], argv[1:]
    if name == "version":
        print(f"igw {__version__}")
        return 0
    module = _load_subcommand(name)
    sub_parser = argparse.ArgumentParser(
        prog=f"igw {name}", description=SUBCOMMANDS[name][1], allow_abbrev=False
    )
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
