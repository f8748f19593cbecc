"""Make the demo clip that `make run` plays when no camera is found: stream_detector/assets/demo.mp4.

    python scripts/make_demo_clip.py

The face is scikit-image's "astronaut" photo (Eileen Collins, NASA, public domain), moved and scaled
over a plain background (tools/media.py); 12 s at 15 fps, 640x360, H.264 (about 90 kB). The clip is
committed; this script is how it was made.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

OUT = Path(__file__).resolve().parent.parent / "stream_detector" / "assets" / "demo.mp4"
FPS = 15
FRAMES_EACH_WAY = 90


def main() -> int:
    import av
    import cv2
    import skimage.data

    from tools.media import compose, head_patch, moving_face_path

    patch = head_patch(cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    path = moving_face_path(FRAMES_EACH_WAY, 640, 360)
    # There and back: the clip loops without a jump.
    placements = path + path[::-1]
    with av.open(str(OUT), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        stream.options = {"crf": "26", "preset": "slow", "movflags": "+faststart"}
        for placement in placements:
            image = compose(patch, [placement], 640, 360)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    print(f"{OUT}: {OUT.stat().st_size // 1024} kB, {len(placements)} frames at {FPS} fps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
