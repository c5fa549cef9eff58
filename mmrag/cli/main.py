"""`mmrag` entry point: parse, run one command, map errors to exit codes (in this one place)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from mmrag.errors import EXIT_FAILED, MmragError


def main(argv: Sequence[str] | None = None) -> int:
    from mmrag.cli.parser import build_parser

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # The hub client logs every retry of every request (twice); our errors say what failed.
        for name in ("huggingface_hub", "httpx", "transformers"):
            logging.getLogger(name).setLevel(logging.ERROR)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except MmragError as e:
        if args.verbose:
            raise
        print(f"mmrag: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("mmrag: interrupted; re-run the same command to finish (nothing is duplicated)", file=sys.stderr)
        return 130
    except Exception as e:  # a run-level failure: one clear line, traceback with -v
        if args.verbose:
            raise
        print(f"mmrag: error ({type(e).__name__}): {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
