"""What tests, benchmarks and scripts share: generated media, the RTSP test server, the headless
browser helpers, the WebRTC test client. Nothing in stream_detector imports this package."""
