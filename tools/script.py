"""The one way a script in scripts/ ends: its exit code, or one line naming the problem and exit 2."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def run_script(name: str, main: Callable[[], int]) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from stream_detector.errors import StreamDetectorError

    try:
        sys.exit(main())
    except StreamDetectorError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        sys.exit(2)
