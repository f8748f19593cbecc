"""Everything between a frame and a verdict: frames and sources (the newest-frame slot), BlazeFace faces,
the one crop convention, the classifier and its model, tracking, smoothing, the overlay, the engine.
Imports nothing from scan, daemon, webrtc, apps or training."""
