"""What an entry point does with bad input: one line naming the problem, exit code 2.

Hydra prints a traceback for any exception; for a wrong path or a malformed file that buries
the one line that matters. ``HYDRA_FULL_ERROR=1`` keeps the traceback for debugging.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

USER_ERRORS = (FileNotFoundError, ValueError)
EXIT_BAD_INPUT = 2


@contextlib.contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """Run the body; a FileNotFoundError / ValueError ends the process with one line on stderr
    (``<prog>: error: <message>``) and exit code 2, unless ``HYDRA_FULL_ERROR=1``."""
    try:
        yield
    except USER_ERRORS as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
