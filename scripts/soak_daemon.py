"""A soak: the daemon on N 720p RTSP cameras for a long while; does its memory or lag grow?

    .venv/bin/python scripts/soak_daemon.py --cameras 8 --minutes 10 --flap-every 120 --json soak.json

Same parts as scripts/benchmark_daemon.py (a real GStreamer RTSP server on 127.0.0.1, the daemon as its
own process). RSS is sampled every ``--interval`` seconds; growth is measured from the end of the warm-up
(``--warmup-minutes``: model loading, allocator pools and the first reconnects settle) to the end, as a
percentage and as a least-squares slope. With ``--flap-every S`` the server is killed and restarted
every S seconds, so every camera goes through reconnection again and again while memory is watched.
Target: RSS growth <= 5 % over 10 minutes, lag flat.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from benchmark_daemon import DaemonProcess, daemon_config, free_port, load_average, make_clip  # noqa: E402

from tools.rtsp_server import RtspServerProcess, system_gstreamer_problem  # noqa: E402


def slope_per_minute(times: list[float], values: list[float]) -> float:
    if len(times) < 2:
        return 0.0
    mean_t, mean_v = statistics.mean(times), statistics.mean(values)
    numerator = sum((t - mean_t) * (v - mean_v) for t, v in zip(times, values, strict=True))
    denominator = sum((t - mean_t) ** 2 for t in times) or 1.0
    return 60.0 * numerator / denominator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=10.0, help="measured time after the warm-up")
    parser.add_argument("--warmup-minutes", type=float, default=2.0)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--process-hz", type=float, default=5.0)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument(
        "--flap-every", type=float, default=0.0, help="kill + restart the server every S seconds"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    problem = system_gstreamer_problem()
    if problem:
        print(f"soak_daemon: {problem}", file=sys.stderr)
        return 2
    width, height = (int(value) for value in args.size.split("x"))
    total_s = (args.minutes + args.warmup_minutes) * 60 + 120
    with tempfile.TemporaryDirectory(prefix="soak-daemon-") as temporary:
        workdir = Path(temporary)
        clip = make_clip(workdir, (width, height), args.fps, total_s, None)
        server = RtspServerProcess(video=clip, mounts=("cam",)).start()
        http_port = free_port()
        config = daemon_config(workdir, server.url("cam"), args.cameras, args.process_hz, http_port)
        daemon = DaemonProcess(config, http_port, workdir / "daemon.log")
        rows = []
        flaps = 0
        try:
            daemon.wait_connected(args.cameras)
            started = time.monotonic()
            next_flap = started + args.flap_every if args.flap_every > 0 else float("inf")
            end = started + total_s - 120
            while time.monotonic() < end:
                time.sleep(args.interval)
                if time.monotonic() >= next_flap:
                    server.kill()
                    time.sleep(3.0)
                    server.start()
                    flaps += 1
                    next_flap += args.flap_every
                sample = daemon.sample()
                names = [f"cam{index:02d}" for index in range(args.cameras)]
                row = {
                    "minute": round((sample.t - started) / 60.0, 2),
                    "rss_mib": round(sample.rss_mib, 1),
                    "cpu_s": round(sample.cpu_s, 1),
                    "lag_mean_s": round(
                        statistics.mean(
                            sample.metrics.get(("stream_detector_camera_lag_seconds", n), 0.0) for n in names
                        ),
                        3,
                    ),
                    "connected": int(
                        sum(sample.metrics.get(("stream_detector_camera_up", n), 0.0) for n in names)
                    ),
                    "reconnects": int(
                        sum(
                            sample.metrics.get(("stream_detector_camera_reconnects_total", n), 0.0)
                            for n in names
                        )
                    ),
                    "processed": int(
                        sum(
                            sample.metrics.get(("stream_detector_camera_frames_processed_total", n), 0.0)
                            for n in names
                        )
                    ),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            stop_seconds = daemon.stop()
            server.stop()
        events_file = workdir / "events" / "events.jsonl"
        events = len(events_file.read_text().splitlines()) if events_file.exists() else 0
    summary = summarise(rows, args.warmup_minutes)
    summary.update(
        cameras=args.cameras,
        server_restarts=flaps,
        events_lines=events,
        stop_seconds=round(stop_seconds, 2),
        load_average_end=load_average(),
    )
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "samples": rows}, indent=1))
    return 0


def summarise(rows: list[dict], warmup_minutes: float) -> dict:
    """RSS growth from the first measured minute to the last (medians, so that one sample taken while
    the cameras were between connections does not decide it), its slope, and the lag's trend."""
    measured = [row for row in rows if row["minute"] >= warmup_minutes]
    warm, last = measured[0], measured[-1]
    first_minute = [row["rss_mib"] for row in measured if row["minute"] <= warm["minute"] + 1.0]
    last_minute = [row["rss_mib"] for row in measured if row["minute"] >= last["minute"] - 1.0]
    rss_warm, rss_end = statistics.median(first_minute), statistics.median(last_minute)
    growth = 100.0 * (rss_end - rss_warm) / rss_warm
    half = len(measured) // 2
    return {
        "minutes_measured": round(last["minute"] - warm["minute"], 1),
        "rss_warm_mib": rss_warm,
        "rss_end_mib": rss_end,
        "rss_min_mib": min(row["rss_mib"] for row in measured),
        "rss_max_mib": max(row["rss_mib"] for row in measured),
        "rss_growth_percent": round(growth, 2),
        "rss_slope_mib_per_min": round(
            slope_per_minute([r["minute"] * 60 for r in measured], [r["rss_mib"] for r in measured]), 3
        ),
        "lag_first_half_s": round(statistics.mean(r["lag_mean_s"] for r in measured[:half]), 3),
        "lag_second_half_s": round(statistics.mean(r["lag_mean_s"] for r in measured[half:]), 3),
        "cpu_cores": round(
            (last["cpu_s"] - warm["cpu_s"]) / ((last["minute"] - warm["minute"]) * 60 or 1), 2
        ),
        "reconnects": last["reconnects"],
        "frames_processed": last["processed"],
        "target_met": growth <= 5.0,
    }


if __name__ == "__main__":
    sys.exit(main())
