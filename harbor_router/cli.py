"""The ``harbor-router`` command: load the configuration, then check it or run the server."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Mapping

from . import __version__
from .config import Config, ConfigError, describe, load_config

PROG = "harbor-router"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Route registry pulls under one prefix to the Harbor proxy-cache project "
        "that holds the image. Configured by environment variables (docs/configuration.md).",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration, print it (secrets masked) and exit",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


def main(argv: list[str] | None = None, *, environ: Mapping[str, str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad usage or configuration)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help or a usage error; argparse already printed why
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    if args.version:
        print(f"{PROG} {__version__}")
        return 0
    try:
        config = load_config(os.environ if environ is None else environ)
    except ConfigError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        for variable, shown in describe(config):
            print(f"{variable}={shown}")
        return 0
    # Imported here so that --check-config and --version never load the data plane.
    server = importlib.import_module(".server", __package__)
    run: Callable[[Config], int] = server.run
    return run(config)
