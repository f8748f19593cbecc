"""File verdicts: the scan report, the one verdict rule, scanning an image, a folder or a video.
Built on stream_detector.pipeline; the webrtc upload path uses it too."""
