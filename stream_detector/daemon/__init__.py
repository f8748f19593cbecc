"""The RTSP monitoring daemon: its config (each key declared once), cameras that reconnect, the
pure event rules and their sinks (JSONL, snapshots, webhook), metrics, health and logs, and the
service that runs them. Built on stream_detector.pipeline."""
