"""Shared pieces of the command-line front ends: one-line errors, exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from tinyfold_ray.errors import TinyFoldError

EXIT_USER_ERROR = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage dump) and exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def run_main(prog: str, main: Callable[[], int]) -> int:
    """Call `main`, turning a user error into one line on stderr instead of a traceback."""
    try:
        return main()
    except TinyFoldError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
