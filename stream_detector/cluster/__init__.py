"""The daemon on a Ray cluster: ``[cluster]`` in the daemon's config (docs/scaling.md).

- classifier.py: the classifier as a Ray Serve deployment that batches the crops of every camera on
  every node, and ``ServeClassifier``, the engine's ``Classifier`` over it;
- sink.py: the one event sink actor (JSONL with fsync, snapshots, webhook, MQTT) on the node that holds
  the storage; it drops duplicate records and ends the incidents of a camera that moved;
- camera.py: one actor per camera, running the single-box daemon's own loop for that camera (capture,
  detect, crop, track, smooth, event rules) with the Serve classifier and the sink actor injected;
- driver.py: ``ClusterDaemon``, the process ``stream-detector daemon`` runs: connects to Ray, deploys
  the classifier, places the cameras, serves one /healthz and /metrics for the whole cluster.

Ray is imported only here, and this package only when the config has a ``[cluster]`` table. The single-box
daemon (stream_detector/daemon) never imports it.
"""
