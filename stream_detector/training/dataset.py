"""Face datasets laid out as ``real/`` and ``fake/`` folders: discovery, decoding, face cropping, splits.

Every image is decoded to pixels (PNG or JPEG alike, whatever its file name says), run through the
MediaPipe face detector and cut with the one crop convention (``crops.py``). Crops are kept at their
native resolution so that augmentation can re-compress and resize them as a camera pipeline would,
before the final resize to 224.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stream_detector.errors import StreamDetectorError
from stream_detector.pipeline.crops import CROP_SCALE, CROP_SIZE, crop_square
from stream_detector.pipeline.sources import is_image_file

log = logging.getLogger(__name__)

CLASSES = ("real", "fake")  # label 0, label 1
# Bump when the crop convention or detector policy changes, so cached crops are rebuilt.
CROP_CACHE_VERSION = 5
# The JPEG quality every fake in ffhq-tpdne carries (IJG tables, 4:2:0, whole 128 px image): the
# history ``equalise_quality`` gives the lossless reals, so both classes reach the crop alike.
FAKE_CLASS_JPEG_QUALITY = 75


@dataclass(frozen=True)
class FaceSet:
    """Native-resolution RGB face crops of one folder, with labels (1 = fake) and provenance."""

    name: str
    crops: list[np.ndarray]
    labels: np.ndarray
    files: list[str]
    groups: list[str]
    # Every file of the folder in which no face was found, kept whole or skipped: a subset (a split)
    # counts its own with no_face_in.
    no_face_files: tuple[str, ...]
    # Files that could not be decoded, skipped (load_face_set(unreadable="skip")); a default so caches
    # written before this field existed still load.
    unreadable_files: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def no_face(self) -> int:
        return len(self.no_face_files)

    def no_face_in(self, names: set[str] | None) -> int:
        """How many files without a detected face are among names (relative_name's), or all if None."""
        return sum(names is None or in_file_list(file, names) for file in self.no_face_files)

    def subset(self, indices: Iterable[int], name: str | None = None) -> FaceSet:
        indices = list(indices)
        return FaceSet(
            name or self.name,
            [self.crops[i] for i in indices],
            self.labels[indices],
            [self.files[i] for i in indices],
            [self.groups[i] for i in indices],
            self.no_face_files,
            self.unreadable_files,
        )


def read_training_record(path: Path, role: str) -> dict:
    """A training record (train.py's training.json) as read by the scripts that follow it: a file that
    does not decode, or decodes to something other than an object, is one line naming ``role`` (the
    option that led to it) and the file, never a JSON traceback. Whether the file exists each caller
    checks first, in its own words."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:  # unreadable, not UTF-8, not JSON
        raise StreamDetectorError(f"{role}: {path} is not a training record ({error})") from None
    if not isinstance(record, dict):
        raise StreamDetectorError(f"{role}: {path} is not a training record (not an object)")
    return record


def read_record_splits(path: Path, role: str, parts: tuple[str, ...]) -> dict[str, dict[str, list[str]]]:
    """The file lists of a training record's ``parts`` (train, validation, test): for each part, the
    files of each source folder. A record without them, or with lists of the wrong shape (hand-edited,
    or one whose split lists were stripped for the repository), is one line naming ``role`` and what
    is missing, never a KeyError in the caller."""
    return record_splits(read_training_record(path, role), path, role, parts)


def record_splits(
    record: dict, path: Path, role: str, parts: tuple[str, ...]
) -> dict[str, dict[str, list[str]]]:
    """read_record_splits for a record already read (read_training_record), so a caller that needs
    other keys of it reads and parses the file once."""
    splits = record.get("splits")
    if not isinstance(splits, dict):
        raise StreamDetectorError(f"{role}: {path} has no split lists (no 'splits' object)")
    found: dict[str, dict[str, list[str]]] = {}
    for part in parts:
        lists = splits.get(part)
        if not isinstance(lists, dict):
            raise StreamDetectorError(f"{role}: {path} has no {part} split list")
        for source, files in lists.items():
            if not isinstance(files, list) or not all(isinstance(file, str) for file in files):
                raise StreamDetectorError(
                    f"{role}: {path}: the {part} list of {source!r} is not a list of file names"
                )
        found[part] = lists
    return found


def find_class_folders(root: Path) -> list[Path]:
    """Folders under root (root included) that hold both real/ and fake/, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise StreamDetectorError(f"data folder not found: {root}")
    found = [path for path in [root, *sorted(p for p in root.rglob("*") if p.is_dir())] if _has_classes(path)]
    if not found:
        raise StreamDetectorError(f"{root}: no real/ and fake/ folders inside")
    return found


def _has_classes(path: Path) -> bool:
    return all((path / name).is_dir() for name in CLASSES)


def list_images(folder: Path) -> list[tuple[Path, int]]:
    """(file, label) for every image in folder/real and folder/fake; an empty class is an error."""
    if not _has_classes(folder):
        raise StreamDetectorError(f"{folder}: expected real/ and fake/ folders")
    items: list[tuple[Path, int]] = []
    for label, name in enumerate(CLASSES):
        files = sorted(p for p in (folder / name).iterdir() if p.is_file() and is_image_file(p))
        if not files:
            raise StreamDetectorError(f"{folder / name}: no images (class '{name}' is empty)")
        items.extend((path, label) for path in files)
    return items


def read_groups(folder: Path) -> dict[str, str]:
    """file name -> identity group from groups.csv (DFDC), or empty when the folder has none."""
    path = folder / "groups.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {row["file"]: row["group"] for row in csv.DictReader(handle)}


def decode_image(path: Path) -> np.ndarray:
    """BGR pixels of an image file, whatever its extension claims; one-line error if unreadable."""
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise StreamDetectorError(f"unreadable image: {path}")
    return image


class StillFaceFinder:
    """The detector policy for still photos: short range first (close faces), then full range."""

    def __init__(self) -> None:
        from stream_detector.pipeline.faces import MediaPipeFaceDetector

        self._detectors = [
            MediaPipeFaceDetector("short", min_confidence=0.5, min_face_size=16, video=False),
            MediaPipeFaceDetector("full", min_confidence=0.5, min_face_size=16, video=False),
        ]

    def find(self, image_bgr: np.ndarray) -> np.ndarray | None:
        """The largest face box (x1, y1, x2, y2), or None."""
        from stream_detector.pipeline.types import Frame

        frame = Frame(image_bgr, 0, 0.0)
        for detector in self._detectors:
            faces = detector.detect(frame)
            if len(faces):
                areas = (faces.boxes[:, 2] - faces.boxes[:, 0]) * (faces.boxes[:, 3] - faces.boxes[:, 1])
                return faces.boxes[int(np.argmax(areas))]
        return None

    def close(self) -> None:
        for detector in self._detectors:
            detector.close()


def native_crop(image_bgr: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    """RGB crop by the shared convention, at native resolution; the whole image when box is None."""
    if box is None:
        region = image_bgr
    else:
        x, y, side = crop_square(box, image_bgr.shape)
        region = image_bgr[y : y + side, x : x + side]
    return np.ascontiguousarray(cv2.cvtColor(region, cv2.COLOR_BGR2RGB))


def load_face_set(
    folder: str | Path,
    no_face: str = "skip",
    cache_dir: Path | None = None,
    progress: bool = True,
    name: str | None = None,
    equalise_quality: int | None = None,
    unreadable: str = "skip",
) -> FaceSet:
    """Decode, detect and crop every image of a real/fake folder.

    ``no_face``: what to do with an image where no face is found — ``skip`` it (one log line each),
    use the ``whole`` image (right for sets that are already face crops), or stop with an ``error``.
    ``equalise_quality``: JPEG-compress every lossless file (PNG and the like) at this quality, whole
    and before the face is found and cut, exactly as the JPEG files of the other class were made.
    Then "was this ever compressed?" and the phase of the 8x8 grid inside the crop say nothing about
    the label (training and checkpoint choice; never for evaluating what a user gives us).
    ``unreadable``: a file that does not decode is ``skip``ped and counted (``unreadable_files``, one
    warning line for the folder), or stops everything with an ``error`` naming it.
    """
    if unreadable not in ("skip", "error"):
        raise ValueError(f"unreadable must be 'skip' or 'error', not {unreadable!r}")
    folder = Path(folder)
    items = list_images(folder)
    groups = read_groups(folder)
    # One header read per file, shared by the cache key and the loop below.
    lossless = (
        {path for path, _ in items if is_lossless_file(path)} if equalise_quality is not None else set()
    )
    if not lossless:
        equalise_quality = None  # nothing to equalise: share the plain crops' cache
    key = hashlib.sha256(
        repr(
            (
                CROP_CACHE_VERSION,
                CROP_SCALE,
                no_face,
                equalise_quality,
                [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p, _ in items],
            )
        ).encode()
    ).hexdigest()[:16]
    cache_path = Path(cache_dir) / f"faces-{folder.name}-{key}.pkl" if cache_dir else None
    if cache_path and cache_path.is_file():
        with cache_path.open("rb") as handle:
            cached = _CacheUnpickler(handle).load()
        if cached.unreadable_files and unreadable == "error":
            raise StreamDetectorError(f"unreadable image: {cached.unreadable_files[0]}")
        _warn_unreadable(folder, cached.unreadable_files)
        return cached

    from tqdm import tqdm

    finder = StillFaceFinder()
    crops, labels, files, file_groups, missing, undecoded = [], [], [], [], [], []
    try:
        for path, label in tqdm(
            items, desc=f"faces {folder.name}", unit="img", disable=not progress, leave=False
        ):
            try:
                image = decode_image(path)
            except StreamDetectorError:
                if unreadable == "error":
                    raise
                undecoded.append(str(path))
                continue
            if path in lossless:
                image = jpeg_bgr(image, equalise_quality)
            box = finder.find(image)
            if box is None:
                missing.append(str(path))
                if no_face == "error":
                    raise StreamDetectorError(f"no face found in {path}")
                if no_face == "skip":
                    log.warning("no face found in %s: skipped", path)
                    continue
            crops.append(native_crop(image, box))
            labels.append(label)
            files.append(str(path))
            # Without a group file every image is its own group (its path: names repeat across folders).
            file_groups.append(groups.get(path.name, str(path)))
    finally:
        finder.close()
    for label, class_name in enumerate(CLASSES):
        if label not in labels:
            raise StreamDetectorError(f"{folder / class_name}: no usable face images")
    result = FaceSet(
        name or folder.name,
        crops,
        np.array(labels, np.int32),
        files,
        file_groups,
        tuple(missing),
        tuple(undecoded),
    )
    _warn_unreadable(folder, result.unreadable_files)
    if cache_path:
        write_pickle(cache_path, result)
    return result


def write_pickle(path: Path, value: object) -> None:
    """Pickle to a file atomically: an interrupted write never leaves a half file under the name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    with temporary.open("wb") as handle:
        pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)
    temporary.replace(path)


def _warn_unreadable(folder: Path, files: tuple[str, ...]) -> None:
    if files:
        names = ", ".join(Path(file).name for file in files[:3])
        log.warning(
            "%s: %d unreadable image(s) skipped (%s%s)",
            folder,
            len(files),
            names,
            ", ..." if len(files) > 3 else "",
        )


class _CacheUnpickler(pickle.Unpickler):
    """Reads caches written before the training modules moved into ``stream_detector.training``."""

    def find_class(self, module: str, name: str):
        if module == "stream_detector.dataset":
            module = __name__
        return super().find_class(module, name)


def split_by_group(
    groups: list[str], fractions: dict[str, float], seed: int = 0, forced: dict[str, str] | None = None
) -> dict[str, list[int]]:
    """Indices per split so that every group lands in exactly one split (no identity on two sides).
    ``forced``: group -> split for groups whose place is already decided (faces an earlier model was
    trained on must stay in train, never reach a split that reports); the others are split at random."""
    forced = {group: split for group, split in (forced or {}).items() if group in set(groups)}
    unique = sorted(set(groups) - set(forced))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique))
    names = list(fractions)
    total = len(unique) + len(forced)
    # What each split still needs after the forced groups, so the whole comes as near the fractions
    # as it can (forced groups beyond a split's share leave the rest to the other splits).
    wanted = np.array(
        [
            max(
                0.0,
                fractions[name] / sum(fractions.values()) * total - sum(v == name for v in forced.values()),
            )
            for name in names
        ]
    )
    bounds = np.cumsum(wanted) / max(wanted.sum(), 1e-9)
    assignment = dict(forced)
    for rank, position in enumerate(order):
        share = (rank + 0.5) / len(unique)
        assignment[unique[position]] = names[int(np.searchsorted(bounds, share))]
    return {name: [i for i, group in enumerate(groups) if assignment[group] == name] for name in names}


def relative_name(file: str | Path, root: str | Path) -> str:
    """A data file's name relative to its data root, so split lists survive moving the data."""
    path, root = Path(file).resolve(), Path(root).resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def in_file_list(file: str | Path, names: set[str]) -> bool:
    """Whether a file is one of the names written by relative_name (matched on its trailing parts)."""
    parts = Path(file).resolve().parts
    return any("/".join(parts[-count:]) in names for count in range(1, min(6, len(parts)) + 1))


def load_listed_faces(root: str | Path, keep: set[str] | None, **options) -> list[FaceSet]:
    """The faces of every real/fake folder under ``root`` (load_face_set with ``options``), restricted
    to the names of a split list (relative_name) unless ``keep`` is None."""
    sets = []
    for folder in find_class_folders(Path(root)):
        faces = load_face_set(folder, **options)
        if keep is not None:
            faces = faces.subset([i for i, file in enumerate(faces.files) if in_file_list(file, keep)])
        sets.append(faces)
    return sets


def resize_crop(crop_rgb: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """A native crop to the model's input size, with the interpolation the live engine uses."""
    if crop_rgb.shape[:2] == (size, size):
        return crop_rgb
    interpolation = cv2.INTER_AREA if crop_rgb.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(crop_rgb, (size, size), interpolation=interpolation)


def is_lossless_file(path: str | Path) -> bool:
    """Whether an image file holds something other than JPEG (PNG and the like), by its content: in
    ffhq-tpdne some files named .jpg hold PNG."""
    try:
        with open(path, "rb") as handle:
            return handle.read(3) != b"\xff\xd8\xff"
    except OSError:
        return False


def jpeg_bgr(image_bgr: np.ndarray, quality: int) -> np.ndarray:
    """One JPEG round trip (OpenCV's defaults: IJG tables, 4:2:0 chroma, like the data's JPEG files)."""
    ok, encoded = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 images
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)


def jpeg(image_rgb: np.ndarray, quality: int) -> np.ndarray:
    return cv2.cvtColor(jpeg_bgr(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), quality), cv2.COLOR_BGR2RGB)
