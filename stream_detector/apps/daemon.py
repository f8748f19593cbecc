"""``stream-detector daemon --config configs/daemon.toml``: arguments -> stream_detector.daemon.service."""

from __future__ import annotations

import argparse
from pathlib import Path

from stream_detector.daemon.config import load_config
from stream_detector.daemon.ops import NativeStderr, configure_logging
from stream_detector.daemon.service import Daemon, StopSignals, tune_allocator
from stream_detector.errors import ConfigError
from stream_detector.pipeline.engine import build_engine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, type=Path, help="the daemon's TOML file (see configs/daemon.toml)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the config, print the cameras (passwords masked) and exit",
    )


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)  # ConfigError: one line, exit 2 (cli.py)
    if args.check:
        for warning in config.warnings:
            print(f"warning: {warning}")
        for camera in config.cameras:
            state = "enabled" if camera.enabled else "disabled"
            print(f"{camera.name}: {camera.display_url} ({state}, {camera.process_hz:g} Hz)")
        if config.cluster is not None:
            print(f"cluster: {config.cluster.address} (namespace {config.cluster.namespace})")
        engine = config.engine
        # The FAKE threshold belongs to the scoring (pipeline/smoothing.py): say both, so a config that
        # turns one on without the other shows it here.
        print(
            f"engine: classifier {engine.backend}, mirror averaging {'on' if engine.mirror_average else 'off'}, "
            f"FAKE at a smoothed {engine.smoothing.fake_enter:g}, classify {engine.classify_hz:g} Hz per face"
        )
        print(f"config OK: {sum(c.enabled for c in config.cameras)} camera(s) enabled")
        return 0
    configure_logging(config.log_format, config.mask)
    tune_allocator()
    # From here on every line on stderr is a structured, masked record, native libraries' included.
    native = NativeStderr().start()
    try:
        if config.cluster is not None:
            # Ray only in cluster mode: the single-box daemon never imports it.
            try:
                import ray  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "cluster: Ray is not installed here (pip install '.[cluster]', or leave out [cluster])"
                ) from None
            from stream_detector.cluster.driver import ClusterDaemon

            cluster = ClusterDaemon(config, config_loader=lambda: load_config(args.config))
            signals = StopSignals()
            with signals as stop:
                return cluster.run(stop, signals.reload)
        # Many cameras share a pool of detectors (faces.DetectorPool) instead of one MediaPipe graph each.
        engine = build_engine(config.engine, shared_detectors=True)  # ModelError: one line, exit 2
        daemon = Daemon(config, engine, config_loader=lambda: load_config(args.config))
        signals = StopSignals()
        with signals as stop:
            return daemon.run(stop, signals.reload)
    finally:
        native.close()
