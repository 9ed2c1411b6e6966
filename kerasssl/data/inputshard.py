"""Which images one input pipeline reads when several feed one data-parallel run.

Under ``MultiWorkerMirroredStrategy`` every worker runs its own input
pipeline (``tf.distribute.InputContext.input_pipeline_id`` of
``num_input_pipelines``); under multi-process JAX every process does
(``jax.process_index()`` of ``jax.process_count()``). Each must read its own
part of the data, so that no image is seen twice across pipelines in an epoch
and no pipeline reads what it does not train on:

- **folder pool**: its usable files, every ``count``-th one from ``index``
  (file-level: a worker opens only its own files);
- **TFRecord pool**: its shard files, every ``count``-th one (file-level),
  before the interleave; when that would leave a pipeline without a usable
  record (fewer shards than pipelines, or a pipeline's shards all empty or
  leak-guarded) it falls back to **record-level** sharding: every pipeline reads
  every shard and keeps the records with ``(shard + record) % count == index``
  (logged; each worker then reads the whole pool to keep a ``1/count`` of it);
- **train split** (in memory): rows ``index, index + count, ...``.

One pipeline (``count == 1``) reads everything, unchanged. The parts are
disjoint and together are the whole: tested, with two real workers too.

Example:
    >>> shard = InputShard(index=1, count=2)
    >>> shard.rows(5)
    array([1, 3])
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kerasssl.data.pool import RECORD_BITS
from kerasssl.errors import KerassslError

FILES, RECORDS = "files", "records"


@dataclasses.dataclass(frozen=True)
class InputShard:
    """One input pipeline of ``count``: this one is number ``index`` (0-based).

    Args:
        index: this pipeline (a worker's ``input_pipeline_id``, a JAX process index).
        count: pipelines in the run (``num_input_pipelines``, ``jax.process_count()``).

    Example:
        >>> InputShard.from_input_context(ctx)   # inside distribute_datasets_from_function
        InputShard(index=0, count=2)
    """

    index: int = 0
    count: int = 1

    def __post_init__(self):
        if not 0 <= int(self.index) < int(self.count):
            raise KerassslError(f"input pipeline {self.index} is not one of {self.count}")

    @classmethod
    def from_input_context(cls, context) -> "InputShard":
        """The shard of a ``tf.distribute.InputContext`` (None: the whole data)."""
        if context is None:
            return cls()
        return cls(int(context.input_pipeline_id), int(context.num_input_pipelines))

    @property
    def whole(self) -> bool:
        return self.count == 1

    def rows(self, n: int) -> np.ndarray:
        """This pipeline's rows of ``n`` (every ``count``-th from ``index``)."""
        return np.arange(self.index, int(n), self.count, dtype=np.int64)

    def __str__(self):
        return f"input pipeline {self.index} of {self.count}"


@dataclasses.dataclass(frozen=True)
class ShardReads:
    """What one pipeline reads of a TFRecord pool.

    Args:
        shards: positions (in ``scan.files.files``) of the shard files it opens.
        mode: ``"files"`` (its own shard files) or ``"records"`` (every shard, a
            record-level filter).
        ids: the usable record ids it yields (leak guard and skips removed).
    """

    shards: np.ndarray
    mode: str
    ids: np.ndarray


def folder_ids(scan, shard: InputShard) -> np.ndarray:
    """The usable ids (rows of ``scan.files.files``) a pipeline streams from a folder pool."""
    used = scan.used_ids
    return used[shard.rows(len(used))]


def record_owner(ids, count: int) -> np.ndarray:
    """The pipeline that owns each record id under record-level sharding: (shard + record) % count."""
    ids = np.asarray(ids, np.int64)
    return ((ids >> RECORD_BITS) + (ids & ((1 << RECORD_BITS) - 1))) % int(count)


def shard_reads(scan, shard: InputShard) -> ShardReads:
    """The shard files and records a pipeline reads of a TFRecord pool (see the module notes).

    File-level when every pipeline gets a usable record from its own shard files,
    else record-level (``mode == "records"``; :func:`kerasssl.data.poolstream.shard_stream`
    logs it).
    """
    n_shards = len(scan.files.files)
    used = scan.used_ids
    if shard.whole:
        return ShardReads(np.arange(n_shards, dtype=np.int64), FILES, used)
    of_shard = used >> RECORD_BITS
    per_pipeline = [np.arange(k, n_shards, shard.count) for k in range(shard.count)]
    if all(np.isin(of_shard, mine).any() for mine in per_pipeline):
        mine = per_pipeline[shard.index]
        return ShardReads(mine.astype(np.int64), FILES, used[np.isin(of_shard, mine)])
    return ShardReads(np.arange(n_shards, dtype=np.int64), RECORDS,
                      used[record_owner(used, shard.count) == shard.index])


def pipeline_ids(scan, shard: InputShard) -> np.ndarray:
    """The usable ids of ``scan`` that pipeline ``shard`` streams (either kind of pool)."""
    if scan.files.kind == "folder":
        return folder_ids(scan, shard)
    return shard_reads(scan, shard).ids
