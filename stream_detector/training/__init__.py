"""Training and evaluation of the detector: data, augmentation, self-blended images, the training loop,
metrics, the confound audit, plots, export. The runtime (pipeline, scan, daemon, webrtc) never imports
this package; it depends on the runtime's crop convention and model definition, never the reverse."""
