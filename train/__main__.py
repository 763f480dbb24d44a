"""Command line: ``python -m train --model braincancernet --dataset PATH_OR_HUB_ID --output-dir DIR``."""

from __future__ import annotations

import logging
import shlex
import sys

from .config import build_parser, resolve_config
from .training import run_training


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = resolve_config(args, command=shlex.join(["python", "-m", "train", *argv]))
    except ValueError as error:
        parser.error(str(error))
    try:
        run_training(config)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
