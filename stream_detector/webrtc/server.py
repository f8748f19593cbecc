"""The aiohttp application: the page, ``POST /offer``, ``POST /scan``, the token, the peer limit.

Everything heavy is injected: a ``FrameAnnotator`` (engine + overlay) that only runs on the
``FrameWorker`` thread, and a ``Scanner`` that only runs on the scan thread, so tests can serve fakes
and the event loop never runs a model.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import hmac
import json
import logging
import math
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aiohttp import web
from aiortc import RTCSessionDescription

from stream_detector.errors import StreamDetectorError
from stream_detector.webrtc.ice import filter_candidates, restrict_host_addresses
from stream_detector.webrtc.latency import marker_frame_assembly
from stream_detector.webrtc.peer import PeerSession
from stream_detector.webrtc.signalling import OfferError, SessionDescription, parse_offer
from stream_detector.webrtc.worker import FrameAnnotator, FrameWorker

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
UPLOAD_CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class ScanResult:
    """A file's scan: the ``scan`` JSON report and an annotated image to show beside it."""

    report: Mapping[str, object]
    annotated_jpeg: bytes | None = None


class ScanCancelled(Exception):
    """Raised from a scan's progress callback when the server shuts down mid-scan."""


class Scanner(Protocol):
    def scan(self, path: Path, name: str, progress: Callable[[float], None]) -> ScanResult:
        """Judge an image or video file; StreamDetectorError (one line) for files that are not media.

        ``name`` is the file's name as uploaded, for messages and the report. ``progress`` takes the fraction done (0..1) and may raise ScanCancelled to stop the scan.
        """


@dataclass(frozen=True)
class ServerSettings:
    max_peers: int = 4
    token: str | None = None
    max_upload_bytes: int = 200 * 1024 * 1024
    # An offer that never completes ICE holds its slot this long (ICE on a LAN connects in 1-2 s).
    connect_timeout_s: float = 8.0
    idle_timeout_s: float = 10.0
    # Offers accepted per client address: a burst, then one per 60 / offers_per_minute seconds.
    offers_per_minute: float = 12.0
    offer_burst: int = 6
    # Local addresses ICE may use (None: all but loopback, aioice's default) and the remote candidate
    # addresses accepted (None: all). A loopback-bound server sets both to its loopback address.
    ice_addresses: tuple[str, ...] | None = None
    remote_addresses: tuple[str, ...] | None = None
    max_batch: int = 8
    # The annotated video goes back at most this wide (0: as received). Encoding it is the server's
    # largest cost for a shared 1080p window; the verdicts are from the full-resolution frame anyway.
    return_max_width: int = 1280
    shutdown_timeout_s: float = 10.0


@dataclass
class _ScanProgress:
    fraction: float = 0.0
    stage: str = "upload"


@dataclass
class ServerState:
    settings: ServerSettings
    worker: FrameWorker
    scanner: Scanner | None
    peers: dict[str, PeerSession] = field(default_factory=dict)
    scan_executor: concurrent.futures.ThreadPoolExecutor | None = None
    scan_progress: dict[str, _ScanProgress] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)
    offer_limiter: RateLimiter = field(default_factory=lambda: RateLimiter(12.0, 6))


# Bodies read whole (offers); /scan streams its upload under its own limit.
MAX_REQUEST_BYTES = 1024 * 1024

STATE_KEY = web.AppKey("stream_detector_webrtc", ServerState)


def error_response(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _token_from(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer ") :].strip()
    return request.query.get("token")


def _protected(path: str) -> bool:
    return path.startswith(("/offer", "/scan", "/status"))


class RateLimiter:
    """A token bucket per client address: ``burst`` at once, then ``per_minute``. Pure: ``now`` (s)
    is an argument, so tests feed times."""

    def __init__(self, per_minute: float, burst: int, max_clients: int = 10_000) -> None:
        self.per_second = per_minute / 60.0
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str, now: float) -> float:
        """0 when ``client`` may go ahead (one token taken); else the seconds until it may."""
        tokens, last = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.per_second)
        if tokens >= 1.0:
            self._remember(client, (tokens - 1.0, now))
            return 0.0
        self._remember(client, (tokens, now))
        return (1.0 - tokens) / self.per_second if self.per_second > 0 else float("inf")

    def _remember(self, client: str, bucket: tuple[float, float]) -> None:
        self._buckets[client] = bucket
        if len(self._buckets) > self.max_clients:
            # Full buckets carry no state worth keeping; drop the oldest entries.
            for stale in sorted(self._buckets, key=lambda key: self._buckets[key][1])[
                : self.max_clients // 10
            ]:
                del self._buckets[stale]


# What aiohttp's own errors say, as one line of the documented JSON.
HTTP_ERROR_MESSAGES = {
    404: "no such page or endpoint",
    405: "method not allowed here",
    413: "request body is too large",
}


@web.middleware
async def json_errors_middleware(request: web.Request, handler):
    """Every error of every endpoint as ``{"error": ...}`` with its status, one line in the log."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        message = HTTP_ERROR_MESSAGES.get(error.status, error.reason)
        if error.status == 413:
            message = f"request body is larger than the {_megabytes(MAX_REQUEST_BYTES)} limit"
        headers = {key: value for key, value in error.headers.items() if key in ("Allow", "Retry-After")}
        log.info("%s %s: %d %s", request.method, request.path, error.status, message)
        return error_response(error.status, message, **headers)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as error:
        detail = str(error).splitlines()[0] if str(error) else ""
        log.error(
            "%s %s failed: %s%s",
            request.method,
            request.path,
            type(error).__name__,
            f": {detail}" if detail else "",
        )
        return error_response(500, "internal error (the server's log has the reason)")


@web.middleware
async def token_middleware(request: web.Request, handler):
    expected = request.app[STATE_KEY].settings.token
    if expected and _protected(request.path):
        given = _token_from(request) or ""
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return error_response(401, "missing or wrong access token (open the page as /?token=...)")
    return await handler(request)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def static_file(request: web.Request) -> web.FileResponse:
    # The page's own files by name only (no sub-folders, no ..): a missing one is a JSON 404.
    name = request.match_info["name"]
    path = STATIC_DIR / name
    if "/" in name or name.startswith(".") or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


async def status(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return web.json_response(
        {
            "peers": len(state.peers),
            "max_peers": state.settings.max_peers,
            "worker_alive": state.worker.alive,
            "worker_sources": state.worker.source_count,
        }
    )


async def offer(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    # Every attempt counts, well-formed or not: the limit guards the parsing and ICE work too.
    client = request.remote or "unknown"
    wait_s = state.offer_limiter.take(client, time.monotonic())
    if wait_s > 0:
        log.info("offer from %s refused: over %g offers per minute", client, state.settings.offers_per_minute)
        return error_response(
            429,
            f"too many offers from {client}: at most {state.settings.offers_per_minute:g} per minute "
            f"after a burst of {state.settings.offer_burst}; try again in {math.ceil(wait_s)} s",
            **{"Retry-After": str(math.ceil(wait_s))},
        )
    try:
        description = parse_offer(await request.read())
    except OfferError as error:
        return error_response(400, str(error))
    if state.stopping.is_set():
        return error_response(503, "the server is shutting down")
    if len(state.peers) >= state.settings.max_peers:
        limit = state.settings.max_peers
        return error_response(
            503, f"the server is busy: it already serves {limit} peer(s), its limit", **{"Retry-After": "10"}
        )

    def forget(session: PeerSession) -> None:
        state.peers.pop(session.peer_id, None)

    session = PeerSession(
        secrets.token_hex(4),
        state.worker,
        on_closed=forget,
        connect_timeout_s=state.settings.connect_timeout_s,
        idle_timeout_s=state.settings.idle_timeout_s,
    )
    # Registered before the first await, so concurrent offers cannot pass the limit together.
    state.peers[session.peer_id] = session
    try:
        answer = await _answer(session, description, state.settings.remote_addresses)
    except OfferError as error:
        await session.close()
        return error_response(400, str(error))
    session.start_watchdog()
    log.info("peer %s: answered (%d peer(s) now)", session.peer_id, len(state.peers))
    return web.json_response(answer.to_json())


async def _answer(
    session: PeerSession, description: SessionDescription, remote_addresses: tuple[str, ...] | None
) -> SessionDescription:
    connection = session.connection
    sdp = filter_candidates(description.sdp, remote_addresses)
    try:
        await connection.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        answer = await connection.createAnswer()
        await connection.setLocalDescription(answer)
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise OfferError(f"offer could not be used: {reason}") from None
    if not session.has_video:
        raise OfferError("offer does not send video (its video must be sendonly or sendrecv)")
    local = connection.localDescription
    return SessionDescription(sdp=local.sdp, type=local.type)


async def scan(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if state.scanner is None or state.scan_executor is None:
        return error_response(404, "file scanning is not enabled on this server")
    limit = state.settings.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        return error_response(413, f"file is larger than the {_megabytes(limit)} limit")
    job = request.query.get("job", "")[:64] or secrets.token_hex(8)
    progress = state.scan_progress.setdefault(job, _ScanProgress())
    directory = Path(tempfile.mkdtemp(prefix="stream-detector-scan-"))
    try:
        try:
            path, name = await _receive_upload(request, directory, limit)
        except web.HTTPException as error:
            return error_response(error.status, error.text or error.reason)
        progress.stage = "scan"

        def report_progress(fraction: float) -> None:
            if state.stopping.is_set():
                raise ScanCancelled
            progress.fraction = float(min(max(fraction, 0.0), 1.0))

        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(
                state.scan_executor, state.scanner.scan, path, name, report_progress
            )
        except StreamDetectorError as error:
            return error_response(400, str(error))
        except ScanCancelled:
            return error_response(503, "the server is shutting down")
        body: dict[str, object] = {"report": dict(result.report)}
        if result.annotated_jpeg is not None:
            body["annotated"] = "data:image/jpeg;base64," + base64.b64encode(result.annotated_jpeg).decode()
        return web.json_response(body, dumps=lambda value: json.dumps(value, default=str))
    finally:
        state.scan_progress.pop(job, None)
        shutil.rmtree(directory, ignore_errors=True)


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.3g} MB"


async def _receive_upload(request: web.Request, directory: Path, limit: int) -> tuple[Path, str]:
    """Stream the multipart ``file`` field to disk, refusing it as soon as it passes ``limit``;
    returns where it is and the name it was sent with."""
    if not request.content_type.startswith("multipart/"):
        raise web.HTTPBadRequest(text='send the file as multipart/form-data in a field named "file"')
    reader = await request.multipart()
    while True:
        part = await reader.next()
        if part is None:
            raise web.HTTPBadRequest(text='no field named "file" in the upload')
        if getattr(part, "name", None) == "file":
            break
    # The client's name is only shown, never used as a path; its suffix tells images from videos.
    name = Path((part.filename or "upload").replace("\\", "/")).name[:120] or "upload"
    suffix = Path(name).suffix[:10]
    path = directory / f"upload{suffix}"
    size = 0
    with path.open("wb") as output:
        while chunk := await part.read_chunk(UPLOAD_CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                raise web.HTTPRequestEntityTooLarge(
                    max_size=limit,
                    actual_size=size,
                    text=f"{name}: file is larger than the {_megabytes(limit)} limit",
                )
            output.write(chunk)
    if size == 0:
        raise web.HTTPBadRequest(text=f"{name}: the uploaded file is empty")
    return path, name


async def scan_progress(request: web.Request) -> web.Response:
    progress = request.app[STATE_KEY].scan_progress.get(request.query.get("job", ""))
    if progress is None:
        return web.json_response({"stage": "unknown", "progress": 0.0})
    return web.json_response({"stage": progress.stage, "progress": round(progress.fraction, 3)})


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE_KEY]
    with restrict_host_addresses(state.settings.ice_addresses), marker_frame_assembly():
        state.worker.start()
        if state.scanner is not None:
            state.scan_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="scan")
        try:
            yield
        finally:
            await shutdown(state)


async def _close_peers(app: web.Application) -> None:
    # on_shutdown runs before aiohttp waits for open requests, so peers hang up first.
    state = app[STATE_KEY]
    state.stopping.set()
    await asyncio.gather(*(peer.close() for peer in list(state.peers.values())), return_exceptions=True)


async def shutdown(state: ServerState) -> None:
    """Hang up every peer, then stop the scan and engine threads, each with a time limit."""
    state.stopping.set()
    timeout = state.settings.shutdown_timeout_s
    closing = [peer.close() for peer in list(state.peers.values())]
    if closing:
        await asyncio.wait(closing, timeout=timeout)
    loop = asyncio.get_running_loop()
    if state.scan_executor is not None:
        executor, state.scan_executor = state.scan_executor, None
        close_scanner = getattr(state.scanner, "close", None)
        if callable(close_scanner):
            # On the scan thread, after a scan in progress has stopped at its next frame.
            executor.submit(close_scanner)
        try:
            stop = functools.partial(executor.shutdown, wait=True, cancel_futures=True)
            await asyncio.wait_for(loop.run_in_executor(None, stop), timeout)
        except TimeoutError:
            log.error("a scan did not stop within %.0f s", timeout)
    await loop.run_in_executor(None, state.worker.close, timeout)


def create_app(
    settings: ServerSettings, annotator: FrameAnnotator, scanner: Scanner | None = None
) -> web.Application:
    """The application; the engine worker and scan thread start and stop with it."""
    app = web.Application(
        middlewares=[json_errors_middleware, token_middleware], client_max_size=MAX_REQUEST_BYTES
    )
    app[STATE_KEY] = ServerState(
        settings=settings,
        worker=FrameWorker(
            annotator, max_batch=settings.max_batch, return_max_width=settings.return_max_width
        ),
        scanner=scanner,
        offer_limiter=RateLimiter(settings.offers_per_minute, settings.offer_burst),
    )
    app.cleanup_ctx.append(_lifetime)
    app.on_shutdown.append(_close_peers)
    app.router.add_get("/", index)
    app.router.add_post("/offer", offer)
    app.router.add_post("/scan", scan)
    app.router.add_get("/scan/progress", scan_progress)
    app.router.add_get("/status", status)
    app.router.add_get("/static/{name}", static_file)
    return app
