"""The WebRTC call check: an aiohttp + aiortc server that judges the video a browser sends.

Stages, each behind a small interface so tests can swap in fakes:
- ``ice``: which local addresses carry media, and which remote candidates are accepted;
- ``signalling``: the ``POST /offer`` JSON and the DataChannel message format;
- ``worker``: one thread that takes the newest frame of every peer and runs them through a
  ``FrameAnnotator`` (the shared engine + overlay) in one batch;
- ``peer``: one RTCPeerConnection, its returned track and verdict channel, and its cleanup;
- ``server``: the aiohttp application (page, /offer, /scan, token, peer limit, shutdown).
"""
