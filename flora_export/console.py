"""What every console script does around its work: logging, one-line errors, exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import traceback
from typing import Callable

from .errors import FloraError
from .outputs import exit_code, interrupt_name, termination_as_interrupt


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, `PROG: error: ...` with a fix, exit code 2."""

    def error(self, message: str):
        hint = "" if "(fix:" in message else f" (see {self.prog} --help)"
        self.exit(2, f"{self.prog}: error: {message}{hint}\n")


def run_command(prog: str, verbose: bool, body: Callable[[], int],
                interrupted: str = "interrupted") -> int:
    """Run `body`; bad input (FloraError) becomes one line on stderr and exit code 2, an
    internal failure one line with the path of a log holding its traceback, exit code 1.
    SIGTERM/SIGHUP are handled like Ctrl-C (cleanup runs; exit code 128 + the signal)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    with termination_as_interrupt():
        try:
            return body()
        except FloraError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:
            code = exit_code(e)
            what = interrupted if code == 130 else interrupted.replace(
                "interrupted", f"terminated ({interrupt_name(e)})", 1)
            print(f"{prog}: {what}", file=sys.stderr)
            return code
        except Exception as e:  # a bug, not bad input: keep the traceback in a log file
            with tempfile.NamedTemporaryFile("w", prefix=f"{prog}-", suffix=".log",
                                             delete=False) as log:
                traceback.print_exc(file=log)
            print(f"{prog}: internal error: {type(e).__name__}: {str(e)[:300]} "
                  f"(details: {log.name})", file=sys.stderr)
            return 1
