"""Native libraries' log noise kept off the terminal unless ``--verbose``.

TensorFlow, LiteRT (46 "Sparsity tensors" lines per model load), absl, oneDNN, FFmpeg and Qt write
straight to file descriptor 2 from C++, past Python's logging, and bury the one-line messages this
tool promises. Their own log levels are set through the environment before they load; what they print
regardless is filtered at the descriptor: fd 2 becomes a pipe whose reader thread drops the known
noise lines and passes everything else on, in order (progress bars with ``\\r`` included) to the
real stderr. ``stop()`` (also at exit) restores fd 2 and drains the pipe, so nothing is lost.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading
import warnings
from typing import Self

# The libraries' own switches, set before they are imported (setdefault: a user's choice wins).
QUIET_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "GLOG_minloglevel": "2",
    "ABSL_MIN_LOG_LEVEL": "2",
    "OPENCV_LOG_LEVEL": "ERROR",
    "OPENCV_FFMPEG_LOGLEVEL": "-8",
    "QT_LOGGING_RULES": "*.debug=false;*.info=false;*.warning=false",
}

NOISE = re.compile(
    rb"(?:"
    rb"(?:WARNING|INFO|ERROR): \[[\w.]+:\d+\]"  # LiteRT / TFLite: WARNING: [model_load.cc:402] ...
    rb"|INFO: Created TensorFlow Lite"
    rb"|WARNING: All log messages before absl::InitializeLog"
    rb"|WARNING: Logging before InitGoogle"
    rb"|[IWE]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\]"  # absl / glog: W0000 00:00:17.. 7140 file.cc:12] ...
    rb"|\[[\w,]+ @ 0x[0-9a-f]+\]"  # FFmpeg: [mpeg4 @ 0x55d4...] header damaged
    rb"|\[ *(?:WARN|INFO|DEBUG):\d+@[\d.]+\]"  # OpenCV: [ WARN:0@0.3] global cap.cpp ...
    rb"|oneDNN custom operations are on"
    rb"|To enable the following instructions"
    rb"|This TensorFlow binary is optimized"
    rb"|Sparsity tensors"
    rb"|The X11 connection broke"  # Qt's, before it exits; the webcam's display guard says it in one line
    rb")"
)

SEPARATOR = re.compile(rb"\r\n?|\n")

_filter: _DescriptorFilter | None = None


def _without_noise(segment: bytes, separator: bytes) -> bytes:
    """One segment of stderr with any noise line cut out; nothing at all for a whole noise line."""
    match = NOISE.search(segment)
    if match is None:
        return segment + separator
    # A noise line that began after a progress bar's text: the bar stays, its redraw follows with \r.
    return segment[: match.start()]


class StderrPipe:
    """File descriptor 2 made a pipe, read by a thread that hands each segment written to ``handle``.

    Native libraries write to fd 2 from C++, past Python's ``sys.stderr``; only at the descriptor can
    their lines be seen. A segment ends at a match of ``separator`` (handed over with it) or, for a
    writer that never ends its line, after ``max_pending`` bytes; what is left at the end comes with an
    empty separator. ``stop`` points fd 2 back at the original, which closes the pipe's last write end:
    the reader drains what was written before it and ends. Subclasses: the terminal's noise filter
    (below) and the daemon's one-log-record-per-line (daemon/ops.NativeStderr).
    """

    separator = re.compile(rb"\n")
    max_pending = 65536
    thread_name = "stderr-pipe"

    def start(self) -> Self:
        sys.stderr.flush()
        self.original = os.dup(2)
        self._redirecting(self.original)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._read_end = read_end
        self._thread = threading.Thread(target=self._pump, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def _redirecting(self, original: int) -> None:
        """Called with the original stderr's descriptor before fd 2 becomes the pipe."""

    def handle(self, segment: bytes, separator: bytes) -> None:
        raise NotImplementedError

    def finished(self) -> None:
        """Called once the pipe has been drained."""

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._read_end, 65536)
            except OSError:
                break
            if not chunk:
                break
            pending += chunk
            start = 0
            for match in self.separator.finditer(pending):
                self.handle(pending[start : match.start()], match.group())
                start = match.end()
            pending = pending[start:]
            if len(pending) > self.max_pending:
                self.handle(pending, b"")
                pending = b""
        if pending:
            self.handle(pending, b"")
        self.finished()
        os.close(self._read_end)

    def stop(self, timeout: float) -> bool:
        """Fd 2 back to the original stderr; whether the reader drained the pipe within ``timeout``."""
        sys.stderr.flush()
        os.dup2(self.original, 2)
        self._thread.join(timeout)
        return not self._thread.is_alive()


class _DescriptorFilter(StderrPipe):
    """Drops the known noise lines and passes everything else on to the real stderr, in order."""

    # Segments end at \n or \r (a progress bar redraws with \r); a noise line may also start in the
    # middle of one (a library writing while a bar is drawn): the line from there goes.
    separator = SEPARATOR
    thread_name = "stderr-filter"

    def handle(self, segment: bytes, separator: bytes) -> None:
        text = _without_noise(segment, separator)
        if text:
            os.write(self.original, text)

    def stop(self, timeout: float = 5.0) -> bool:
        drained = super().stop(timeout)
        os.close(self.original)
        return drained


def quiet_native_logs() -> None:
    """Quiet the native libraries for this process (idempotent). Call before importing them."""
    global _filter
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    # Python-level warnings of the same libraries (Keras' input-structure notes and the like).
    warnings.filterwarnings("ignore", module=r"(keras|tensorflow|google|absl|jax)(\.|$)")
    if _filter is None:
        try:
            _filter = _DescriptorFilter().start()
        except OSError:  # no usable fd 2 (a daemon without stderr): nothing to filter
            return
        atexit.register(stop_filtering)


def original_stderr() -> int:
    """The descriptor of the real stderr, for a last line written just before ``os._exit``."""
    return _filter.original if _filter is not None else 2


def stop_filtering() -> None:
    global _filter
    if _filter is not None:
        active, _filter = _filter, None
        active.stop()
