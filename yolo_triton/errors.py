"""How the command-line entry points (`make build-engines`, `make serve`, the build scripts) refuse: a user's error
(a file that is not what it should be, a model that does not fit, a missing plugin) is one paragraph on stderr and
exit status 2, not a traceback. ``YOLO_TRITON_DEBUG=1`` shows the traceback too."""
from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Sequence

DEBUG_ENV = "YOLO_TRITON_DEBUG"
# what a user's input can cause: OnnxImportError, CheckpointError, DarknetError and ValueError for files that are not
# what they should be, OSError for files that are not there; anything else is a bug and keeps its traceback
USER_ERRORS = (ValueError, OSError)


def run(main: Callable[[Optional[Sequence[str]]], int], prog: str, argv: Optional[Sequence[str]] = None) -> int:
    """``main(argv)``, with a user's error reported as ``prog: message`` and exit status 2."""
    try:
        return main(argv)
    except USER_ERRORS as error:
        if os.environ.get(DEBUG_ENV):
            raise
        message = str(error) if not isinstance(error, OSError) or not error.filename else \
            f"{error.filename}: {error.strerror or error}"
        print(f"{prog}: {message}\n(YOLO_TRITON_DEBUG=1 shows where it was raised)", file=sys.stderr)
        return 2
