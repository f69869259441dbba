"""What every console script does around its work: logging, one-line errors, exit codes."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from .errors import FloraError


def run_command(prog: str, verbose: bool, body: Callable[[], int],
                interrupted: str = "interrupted") -> int:
    """Run `body`; bad input (FloraError) becomes one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return body()
    except FloraError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
