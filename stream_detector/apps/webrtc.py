"""``stream-detector serve``: the WebRTC call check page on the shared engine.

A browser opens the page, sends its camera over WebRTC, and gets the annotated video and a verdict
panel back; the same page scans uploaded image and video files. See stream_detector/webrtc/.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
from dataclasses import replace

from stream_detector.apps.arguments import add_engine_arguments
from stream_detector.errors import StreamDetectorError

log = logging.getLogger(__name__)

TOKEN_ENVIRONMENT = "STREAM_DETECTOR_TOKEN"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only, media stays on loopback)",
    )
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument(
        "--max-peers", type=int, default=4, help="concurrent calls; the next one is refused (default 4)"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENVIRONMENT),
        help=f"access token required by /offer and /scan (default: ${TOKEN_ENVIRONMENT}); "
        "open the page as /?token=...",
    )
    parser.add_argument(
        "--offers-per-minute",
        type=float,
        default=12.0,
        help="offers accepted per client address after a burst of 6; more get HTTP 429 (default 12)",
    )
    parser.add_argument(
        "--return-max-width",
        type=int,
        default=1280,
        help="the annotated video goes back at most this many pixels wide; verdicts always come from "
        "the full-resolution frame (default 1280; 0: as received)",
    )
    add_engine_arguments(parser, classify_hz=15.0)
    parser.add_argument(
        "--classify-budget",
        type=float,
        default=30.0,
        help="classifications per second per call, shared by its faces: a 4-face gallery gets 7.5 Hz "
        "each, in turns, one face keeps --classify-hz (default 30; 0: no limit)",
    )
    parser.add_argument(
        "--inline-classification",
        action="store_true",
        help="classify on each frame's own path, so a returned frame carries its own faces' scores "
        "(default: on a thread of its own, scores land a frame or two later and frames come back sooner)",
    )
    parser.add_argument(
        "--tiles-every-ms",
        type=float,
        default=1000.0,
        help="a frame wider than 1600 px is searched tile by tile this often; in between, faces the "
        "whole frame misses are looked for where they were (default 1000; 0: every frame)",
    )
    parser.add_argument(
        "--max-upload-mb", type=float, default=200.0, help="largest file /scan accepts (default 200)"
    )
    parser.add_argument(
        "--certfile", help="TLS certificate (browsers only allow the camera on https:// or localhost)"
    )
    parser.add_argument("--keyfile", help="TLS private key for --certfile")


def _check(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise StreamDetectorError(f"--port must be 0..65535, not {args.port}")
    if args.max_peers < 1:
        raise StreamDetectorError(f"--max-peers must be at least 1, not {args.max_peers}")
    if args.return_max_width != 0 and not 64 <= args.return_max_width <= 8192:
        raise StreamDetectorError(f"--return-max-width must be 0 or 64..8192, not {args.return_max_width}")
    if args.offers_per_minute <= 0:
        raise StreamDetectorError(f"--offers-per-minute must be positive, not {args.offers_per_minute}")
    if args.max_upload_mb <= 0:
        raise StreamDetectorError(f"--max-upload-mb must be positive, not {args.max_upload_mb}")
    if args.classify_hz < 0:
        raise StreamDetectorError(f"--classify-hz must be >= 0, not {args.classify_hz}")
    if not 0 <= args.classify_budget <= 1000:
        raise StreamDetectorError(
            f"--classify-budget must be 0 (no limit) to 1000, not {args.classify_budget}"
        )
    if not 0 <= args.tiles_every_ms <= 60000:
        raise StreamDetectorError(
            f"--tiles-every-ms must be 0 (every frame) to 60000, not {args.tiles_every_ms}"
        )
    if args.keyfile and not args.certfile:
        raise StreamDetectorError("--keyfile needs --certfile")


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.certfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.certfile, args.keyfile)
    except (OSError, ssl.SSLError) as error:
        raise StreamDetectorError(f"cannot load TLS certificate {args.certfile}: {error}") from None
    return context


def run(args: argparse.Namespace) -> int:
    _check(args)
    # aiortc (and with it libsrtp) before anything that loads TensorFlow or MediaPipe.
    from aiohttp import web

    from stream_detector.pipeline.engine import build_engine, settings_from_arguments
    from stream_detector.webrtc.annotator import EngineAnnotator
    from stream_detector.webrtc.ice import host_addresses_for, is_loopback
    from stream_detector.webrtc.scanning import build_scanner
    from stream_detector.webrtc.server import ServerSettings, create_app

    ssl_context = _ssl_context(args)
    local_addresses = host_addresses_for(args.host)
    settings = ServerSettings(
        max_peers=args.max_peers,
        token=args.token or None,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        offers_per_minute=args.offers_per_minute,
        return_max_width=args.return_max_width,
        ice_addresses=tuple(local_addresses) if local_addresses else None,
        # Bound to loopback, only loopback candidates are accepted: media never leaves this machine.
        remote_addresses=tuple(local_addresses) if local_addresses and is_loopback(args.host) else None,
    )
    if not is_loopback(args.host) and not settings.token:
        log.warning("serving on %s without --token: anyone who can reach it can use it", args.host)

    engine_settings = replace(
        settings_from_arguments(args),
        classify_budget_hz=args.classify_budget,
        tiles_every_ms=args.tiles_every_ms,
        classify_in_background=not args.inline_classification,
    )
    # Peers come and go: a shared pool of detectors makes a new peer's first frame as fast as any.
    engine = build_engine(engine_settings, shared_detectors=True)
    # MediaPipe and the classifier start in seconds; pay that now, not on the first caller's frames.
    engine.prepare("warm-up")
    engine.close_source("warm-up")
    annotator = EngineAnnotator(engine)
    scanner = build_scanner(engine_settings)
    app = create_app(settings, annotator, scanner)
    scheme = "https" if ssl_context else "http"
    shown_host = "127.0.0.1" if args.host in ("", "0.0.0.0", "::") else args.host
    query = "?token=..." if settings.token else ""
    try:
        web.run_app(
            app,
            host=args.host,
            port=args.port,
            ssl_context=ssl_context,
            print=lambda _: print(
                f"stream-detector serve: open {scheme}://{shown_host}:{args.port}/{query} "
                f"({engine.description}; Ctrl+C to stop)",
                flush=True,
            ),
            access_log=None,
            handle_signals=True,
        )
    except OSError as error:
        raise StreamDetectorError(
            f"cannot listen on {args.host}:{args.port}: {error.strerror or error}"
        ) from None
    finally:
        annotator.close()
    return 0
