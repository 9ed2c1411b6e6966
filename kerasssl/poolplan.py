"""What pretraining does with its unlabeled pools before the first step, and what it records.

:func:`plan_pools` lists every pool of ``pretrain.unlabeled`` (a resumed run
refuses a pool whose listing changed, before reading anything), checks the
headers, runs the content pass and the leak guard against DATA's val and test
images (:mod:`kerasssl.data.pool`), and writes nothing. Once the run is
accepted, :meth:`PoolPlan.write` records:

- ``RUN/pools.json``: per pool its path, kind, file (or shard) and image
  counts, bytes, listing and content fingerprints, band axis, skipped count and
  leak-guard count; the total of unlabeled images used; the leak guard (how
  many held-out images it compared with, how many pool images it took out and
  which); the files skipped; the sample behind ``dataset`` normalisation;
- ``RUN/skipped_files.txt``: one ``POOL<TAB>file<TAB>problem`` line per file
  ``--skip-bad`` skipped (written only when there are some).

Example:
    >>> plan = plan_pools(cfg, "runs/a", image_set=data, split=split)
    >>> plan.n_unlabeled, plan.guard.excluded
    (2988, 12)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Callable, List, Optional

import numpy as np

from kerasssl.data.pool import _check_expected, check_headers, check_pool_paths, check_pools_disjoint, list_pool
from kerasssl.data.poolscan import (
    HINT_SAMPLE_IMAGES,
    SAMPLE_IMAGES,
    LeakGuard,
    PoolScan,
    check_unchanged,
    leak_guard,
    pool_record,
    scan_pool,
    skipped_lines,
)
from kerasssl.errors import KerassslError
from kerasssl.rundir import SKIPPED_FILES as SKIPPED_FILE
from kerasssl.rundir import RunDir, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PoolPlan:
    """The pools a pretraining will stream, checked, with the leak guard applied.

    Args:
        scans: one :class:`kerasssl.data.pool.PoolScan` per pool.
        guard: what the leak guard took out.
        image_shape: (H, W, C) of every pool image.
        n_train: labelled train-split images pretraining also uses.
        seed: the seed of the pools' samples.
    """

    scans: List[PoolScan]
    guard: LeakGuard
    image_shape: tuple
    n_train: int
    seed: int

    @property
    def n_unlabeled(self) -> int:
        """Pool images pretraining uses (skipped and leak-guarded ones left out)."""
        return int(sum(s.n_used for s in self.scans))

    @property
    def n_skipped(self) -> int:
        return int(sum(len(s.skipped) for s in self.scans))

    def sample(self) -> np.ndarray:
        """The pools' seeded samples, together (float32 (k, H, W, C))."""
        return np.concatenate([s.sample for s in self.scans])

    def fingerprints(self) -> np.ndarray:
        """Content fingerprints (uint8 (n_unlabeled, 16)) of every pool image pretraining uses."""
        return np.concatenate([s.used_fingerprints for s in self.scans])

    def record(self, normalization_sample: Optional[dict] = None) -> dict:
        """The content of ``RUN/pools.json``."""
        return {
            "format": 1,
            "pools": [pool_record(s) for s in self.scans],
            "unlabeled_images": self.n_unlabeled,
            "train_split_images": int(self.n_train),
            "leak_guard": self.guard.as_dict(),
            "skipped_files": [{"pool": s.files.path, "file": name, "problem": problem}
                              for s in self.scans for name, problem in s.skipped],
            "skipped_list": SKIPPED_FILE if self.n_skipped else None,
            "normalization_sample": normalization_sample,
        }

    def write(self, run_dir, normalization_sample: Optional[dict] = None) -> None:
        """Write ``RUN/pools.json`` (and ``RUN/skipped_files.txt`` when files were skipped)."""
        run = RunDir(run_dir)
        if self.n_skipped:
            write_text_atomic(run.skipped_files, "\n".join(skipped_lines(self.scans)) + "\n")
        write_json_atomic(run.pools, self.record(normalization_sample))

    def summary(self) -> str:
        """One line for the progress output."""
        parts = [f"{s.files.path}: {s.n_used} of {s.n_images} images" for s in self.scans]
        line = "unlabeled pool(s) " + "; ".join(parts)
        if self.n_skipped:
            line += f"; {self.n_skipped} bad file(s) skipped (see {SKIPPED_FILE})"
        return line + "; " + self.guard.summary()


def recorded_pools(run_dir) -> Optional[dict]:
    """``RUN/pools.json`` as a dict, or None when the run has none."""
    path = RunDir(run_dir).pools
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise KerassslError(f"{path}: not valid JSON ({e})") from None


def check_pools_unchanged(paths, run_dir, *, skip_bad=False) -> None:
    """Refuse (one line) a pool whose listing differs from ``RUN/pools.json`` (cheap: no file opened)."""
    recorded = recorded_pools(run_dir)
    if recorded is None:
        return
    by_path = {p["path"]: p for p in recorded.get("pools", [])}
    for path in paths:
        if path in by_path:
            files, _ = list_pool(path, skip_bad=skip_bad)
            check_unchanged(by_path[path], files, where=str(run_dir))


def plan_pools(cfg, run_dir, *, image_set=None, split=None, resume=False,
               progress: Optional[Callable[[str], None]] = None) -> PoolPlan:
    """List, check and read every pool of ``cfg.pretrain.unlabeled``; apply the leak guard. Writes nothing.

    Args:
        cfg: the run config (``pretrain.unlabeled`` / ``skip_bad``, ``data.*``, ``seed``).
        run_dir: the run directory (with ``resume``: its ``pools.json`` is compared).
        image_set / split: the labelled data and its split, or None (no DATA):
            the pools must match its image shape; its val and test images feed the leak guard.
        resume: refuse a pool that changed since the run recorded it.
        progress: called with one-line messages (a pass over a big pool takes a while).

    Raises:
        KerassslError / DataError: the one-line reason.
    """
    from kerasssl.fingerprints import fingerprints

    say = progress or log.info
    paths = check_pool_paths(cfg.pretrain.unlabeled)
    if not paths:
        raise KerassslError("no unlabeled pool given (--unlabeled, pretrain.unlabeled)")
    d, skip_bad = cfg.data, bool(cfg.pretrain.skip_bad)
    recorded = {p["path"]: p for p in (recorded_pools(run_dir) or {}).get("pools", [])} if resume else {}
    listed = []
    for path in paths:  # all listings first: a changed pool is refused before any read
        files, skipped = list_pool(path, skip_bad=skip_bad)
        if path in recorded:
            check_unchanged(recorded[path], files, where=str(run_dir))
        listed.append((files, skipped))
    check_pools_disjoint([files for files, _ in listed])
    expected = tuple(image_set.image_shape) if image_set is not None else None
    layouts = []
    for files, skipped in listed:
        layout = check_headers(files, image_size=d.image_size, channel_axis=d.channel_axis,
                               allow_pickle=d.allow_pickle, skip_bad=skip_bad,
                               expected_shape=expected, skipped=skipped)
        expected = expected or layout.image_shape
        layouts.append(layout)
    scans = []
    for k, layout in enumerate(layouts):
        say(f"      reading unlabeled pool {layout.files.path} ({len(layout.files.files)} "
            f"{'shard' if layout.files.kind == 'tfrecord' else 'file'}(s), "
            f"{layout.files.bytes / 2 ** 20:.1f} MiB): fingerprints and checks")
        # `dataset` statistics need a sample; otherwise a small one serves the NaN-loss hint.
        scan = scan_pool(layout, image_size=d.image_size, allow_pickle=d.allow_pickle,
                         skip_bad=skip_bad, seed=int(cfg.seed) + k,
                         sample_size=SAMPLE_IMAGES if d.normalization == "dataset" else HINT_SAMPLE_IMAGES)
        if expected is not None:
            _check_expected(layout.files.root, scan.image_shape, expected)
        expected = expected or tuple(scan.image_shape)
        if layout.files.path in recorded:
            check_unchanged(recorded[layout.files.path], layout.files, scan=scan, where=str(run_dir))
        scans.append(scan)
    if image_set is not None and split is not None:
        held = np.concatenate([np.asarray(split.indices(image_set, "val"), np.int64),
                               np.asarray(split.indices(image_set, "test"), np.int64)])
        guard = leak_guard(scans, fingerprints(image_set.images[held]), [image_set.files[i] for i in held])
        n_train = len(split.train)
    else:  # pools alone: no held-out images to protect
        guard, n_train = leak_guard(scans, np.zeros((0, 16), np.uint8), []), 0
        guard.active = False
    plan = PoolPlan(scans=scans, guard=guard, image_shape=tuple(expected), n_train=n_train,
                    seed=int(cfg.seed))
    say("      " + plan.summary())
    if plan.n_unlabeled == 0:
        raise KerassslError(f"{', '.join(paths)}: no pool image is left to pretrain on")
    return plan
