"""Content fingerprints of the images that trained a model, stored inside its ``.keras`` file.

The overlap guard of ``evaluate`` must hold whatever run directory or data
folder it is given: a classifier carries the fingerprints of every image that
trained it (pretraining and fine-tuning), and an image to evaluate on is
refused when its fingerprint is among them. A fingerprint hashes the content
(a copied or renamed file is the same image), not the path:

    blake2b, 16-byte digest, over the (H, W, C) shape (3 little-endian int64)
    then the C-order little-endian float32 bytes of the image as the model
    takes it (after the loader's layout fix and centre crop; NaN kept).

Storage: extra entries in the ``.keras`` zip archive, which Keras ignores on
load (tested)::

    kerasssl/fingerprints.json          {"format", "hash", "role", "stages": {stage: {"count", "entry"}}}
    kerasssl/fingerprints-<stage>.npy   uint8 (N, 16), sorted, unique

``role`` says what the file holds ("encoder" or "classifier"). Re-saving the
model with Keras drops these entries (then ``evaluate`` warns that it can only
check file names).

Example:
    >>> fp = TrainingFingerprints({"pretrain": fingerprints(train_images)})
    >>> fp.write("run/encoder.keras", role="encoder")
    >>> TrainingFingerprints.read("run/encoder.keras").count("pretrain")
    1234
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from typing import Dict, Optional

import numpy as np

from kerasssl.errors import DataError

FORMAT = 1
DIGEST_SIZE = 16
HASH = ("blake2b-128 over the (H, W, C) shape as 3 little-endian int64, then the image's "
        "C-order little-endian float32 bytes (the model's input, NaN kept)")
MANIFEST = "kerasssl/fingerprints.json"
STAGES = ("pretrain", "finetune")
ROLES = ("encoder", "classifier")


def fingerprint(image) -> bytes:
    """The 16-byte content hash of one (H, W, C) image (see the module docstring)."""
    image = np.ascontiguousarray(image, dtype="<f4")
    if image.ndim != 3:
        raise ValueError(f"a fingerprint is taken of one (H, W, C) image, not shape {image.shape}")
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    h.update(np.asarray(image.shape, dtype="<i8").tobytes())
    h.update(image.tobytes())
    return h.digest()


def fingerprints(images) -> np.ndarray:
    """Fingerprints of a batch (N, H, W, C) as a uint8 array (N, 16), in the images' order."""
    images = np.asarray(images)
    out = np.empty((len(images), DIGEST_SIZE), np.uint8)
    for i, image in enumerate(images):
        out[i] = np.frombuffer(fingerprint(image), np.uint8)
    return out


def _canonical(rows) -> np.ndarray:
    rows = np.asarray(rows, np.uint8).reshape(-1, DIGEST_SIZE)
    return np.unique(rows, axis=0) if len(rows) else rows


class TrainingFingerprints:
    """Per training stage, the fingerprints of the images that trained a model.

    Args:
        stages: ``{stage: uint8 (N, 16) fingerprints}`` (e.g. "pretrain", "finetune").

    Example:
        >>> fp = TrainingFingerprints({"finetune": fingerprints(x_labeled)})
        >>> fp.overlap(fingerprints(x_test))
        {}
    """

    def __init__(self, stages: Optional[Dict[str, np.ndarray]] = None):
        self.stages = {str(k): _canonical(v) for k, v in (stages or {}).items()}

    def count(self, stage) -> int:
        return int(len(self.stages.get(stage, ())))

    def counts(self) -> dict:
        return {stage: len(rows) for stage, rows in self.stages.items()}

    def union(self, other: "TrainingFingerprints") -> "TrainingFingerprints":
        """Both sets, stage by stage."""
        merged = dict(self.stages)
        for stage, rows in other.stages.items():
            merged[stage] = np.concatenate([merged[stage], rows]) if stage in merged else rows
        return TrainingFingerprints(merged)

    def overlap(self, candidates) -> dict:
        """``{stage: indices into candidates}`` of the fingerprints (N, 16) that trained the model."""
        candidates = np.asarray(candidates, np.uint8).reshape(-1, DIGEST_SIZE)
        keys = _as_keys(candidates)
        found = {}
        for stage, rows in self.stages.items():
            hit = np.flatnonzero(np.isin(keys, _as_keys(rows)))
            if len(hit):
                found[stage] = hit
        return found

    # -- in a .keras archive ------------------------------------------------------
    def write(self, path, role: str) -> None:
        """Append the fingerprints to the ``.keras`` zip at ``path`` (write it to a temp file first)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        manifest = {"format": FORMAT, "hash": HASH, "role": role, "stages": {}}
        with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_STORED) as archive:
            if MANIFEST in archive.namelist():
                raise ValueError(f"{path}: already holds fingerprints")
            for stage, rows in self.stages.items():
                entry = f"kerasssl/fingerprints-{stage}.npy"
                buffer = io.BytesIO()
                np.save(buffer, rows, allow_pickle=False)
                archive.writestr(entry, buffer.getvalue())
                manifest["stages"][stage] = {"count": int(len(rows)), "entry": entry}
            archive.writestr(MANIFEST, json.dumps(manifest, indent=1))

    @classmethod
    def read(cls, path) -> Optional["TrainingFingerprints"]:
        """The fingerprints stored in a ``.keras`` file, or None when it has none."""
        manifest, archive = _manifest(path)
        if manifest is None:
            return None
        stages = {}
        with archive:
            for stage, info in manifest.get("stages", {}).items():
                try:
                    rows = np.load(io.BytesIO(archive.read(info["entry"])), allow_pickle=False)
                except (KeyError, TypeError, ValueError, OSError) as e:
                    raise DataError(path, f"broken training fingerprints ({stage}: {type(e).__name__})") from None
                if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != DIGEST_SIZE \
                        or len(rows) != info.get("count"):
                    raise DataError(path, f"broken training fingerprints ({stage}: array {rows.dtype} {rows.shape})")
                stages[stage] = rows
        return cls(stages)


def role_of(path) -> Optional[str]:
    """"encoder" or "classifier" as recorded in a ``.keras`` file by kerasssl, or None."""
    manifest, archive = _manifest(path)
    if manifest is None:
        return None
    archive.close()
    return manifest.get("role")


def _manifest(path):
    """(manifest dict, open ZipFile) or (None, None) for a file without fingerprints."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile):
        return None, None
    if MANIFEST not in archive.namelist():
        archive.close()
        return None, None
    try:
        manifest = json.loads(archive.read(MANIFEST))
    except (ValueError, OSError, zipfile.BadZipFile):
        archive.close()
        raise DataError(path, f"broken training fingerprints ({MANIFEST} is not valid JSON)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("hash") != HASH:
        archive.close()
        raise DataError(path, f"training fingerprints in an unknown format ({MANIFEST})")
    return manifest, archive


def _as_keys(rows) -> np.ndarray:
    """(N, 16) uint8 -> (N,) void scalars, so np.isin compares whole digests."""
    rows = np.ascontiguousarray(rows, np.uint8)
    return rows.view(np.dtype((np.void, DIGEST_SIZE))).reshape(-1)
