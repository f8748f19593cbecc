"""stream_detector: real-time deepfake detection on live video."""

# TensorFlow (also pulled in by MediaPipe) ships BoringSSL; if it loads before libsrtp, libsrtp's
# srtp_init binds to it and segfaults. Loading pylibsrtp first pins libsrtp to its own crypto.
import contextlib

with contextlib.suppress(ImportError):
    import pylibsrtp  # noqa: F401

__version__ = "0.1.0"
