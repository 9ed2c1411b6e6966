"""A survey to run a model over: image files and TFRecord shards, listed, then streamed in batches.

SURVEY arguments (what ``kerasssl scan`` and ``kerasssl index`` take):

- a folder: every ``.npy`` / FITS file in it at any depth (labelled class
  folders or a flat unlabeled pool alike; hidden entries skipped), in
  natural order; a folder holding only ``*.tfrecord*`` shards is read as shards;
- an image file, or a file list (``.txt`` / ``.lst``: one path a line, relative
  to the list's folder; blank lines and ``#`` comments skipped);
- TFRecord shards: a glob, one shard, or a folder of shards, labelled or not
  (only the ``image`` and ``shape`` features are read).

Each item has an ``id``: its path relative to the SURVEY argument given (the
path as given for a single file, the line as written for a file list), or
``shard:record`` for a TFRecord record (the shard relative to the glob's
folder). With several SURVEY arguments every id carries its argument in front,
so ids stay unique. :meth:`Survey.fingerprint` hashes the listing (ids, sizes,
modification times): a resumed scan checks it.

:func:`stream` reads the items in that order with tf.data (parallel reads of
whole batches, prefetch) and yields :class:`Batch` es of raw pixels, NaN kept
(the model's own ``Preprocess`` repairs them), read as ``kerasssl predict``
reads a file: the array as stored -> (H, W, C) -> centre-crop to the model's
input. A file or record that cannot be used does not stop the stream: it comes
back in ``Batch.bad`` with its one-line problem, for the caller to refuse or skip.

Example:
    >>> survey = list_survey(["/data/pool"])
    >>> reader = ImageReader((64, 64, 3))
    >>> for batch in stream(survey, reader, batch_size=256):
    ...     probabilities = model(batch.images)       # batch.ids name the rows
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from kerasssl.errors import DataError, KerassslError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".npy", ".npz", ".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
LIST_SUFFIXES = (".txt", ".lst")
#: Files kerasssl writes beside images (simulate, convert): not warned about.
SIDECAR_FILES = {"metadata.csv", "manifest.json"}
_GLOB_CHARS = set("*?[")


def _natural_key(text: str):
    # "pool_2.npy" before "pool_10.npy"
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _is_image_name(name: str) -> bool:
    # .npz is listed so that it is named as a bad file, not silently left out
    return name.lower().endswith(IMAGE_SUFFIXES)


def _is_tfrecord_arg(text: str) -> bool:
    return bool(_GLOB_CHARS & set(text)) or ".tfrecord" in os.path.basename(text)


# -- the listing ---------------------------------------------------------------


@dataclass
class FileSource:
    """Image files, in order: ``ids[i]`` names ``paths[i]``."""

    argument: str
    ids: List[str]
    paths: List[str]

    def __len__(self):
        return len(self.paths)

    @property
    def count(self) -> Optional[int]:
        return len(self.paths)

    def identity(self) -> Iterator[str]:
        for item_id, path in zip(self.ids, self.paths):
            try:
                st = os.stat(path)
                yield f"{item_id}\0{st.st_size}\0{st.st_mtime_ns}"
            except OSError:
                yield f"{item_id}\0missing"


@dataclass
class ShardSource:
    """One TFRecord shard; its records' ids are ``f"{name}:{index}"``.

    Args:
        count: the records the manifest lists for it (None without one).
        channel_axis: the band axis the manifest records ("first"/"last") or None.
    """

    argument: str
    path: str
    name: str
    count: Optional[int] = None
    channel_axis: Optional[str] = None

    def identity(self) -> Iterator[str]:
        import tensorflow as tf

        try:
            st = tf.io.gfile.stat(self.path)
            yield f"{self.name}\0{st.length}\0{st.mtime_nsec}"
        except tf.errors.OpError:
            yield f"{self.name}\0missing"


@dataclass
class Survey:
    """The sources of a survey, in reading order."""

    arguments: List[str]
    sources: list = field(default_factory=list)

    @property
    def total(self) -> Optional[int]:
        """Number of items, or None when a shard's record count is unknown (no manifest)."""
        counts = [s.count for s in self.sources]
        return None if None in counts else sum(counts)

    def fingerprint(self) -> str:
        """sha256 of the listing: every id with its file's size and modification time."""
        digest = hashlib.sha256()
        for source in self.sources:
            digest.update(f"{type(source).__name__}\0{source.argument}\n".encode())
            for line in source.identity():
                digest.update(line.encode("utf-8", "surrogateescape") + b"\n")
        return digest.hexdigest()


def list_survey(arguments: Sequence) -> Survey:
    """The items of SURVEY arguments (folders, image files, file lists, TFRecord globs).

    Lists names only (no pixels read; a TFRecord's manifest is read for its
    record counts).

    Raises:
        DataError: an argument that names nothing, a folder without images or
            shards, a file that is neither an image nor a file list, an id
            listed twice.

    Example:
        >>> list_survey(["data/3b"]).sources[0].ids[:1]
        ['lenses/lens_0.npy']
    """
    arguments = [str(a) for a in arguments]
    if not arguments:
        raise KerassslError("no SURVEY given")
    prefix = len(arguments) > 1
    survey = Survey(arguments)
    for argument in arguments:
        survey.sources.extend(_sources_of(argument, prefix))
    _check_unique(survey)
    return survey


def _sources_of(argument: str, prefix: bool) -> list:
    path = Path(argument)
    if _is_tfrecord_arg(argument):
        return _shard_sources(argument, argument, prefix)
    if path.is_dir():
        ids, paths, others = _walk(path)
        if ids:
            if others:  # beside images, not in a folder of shards (its manifest.json is no stray)
                log.warning("%s: %d file(s) that are not .npy/FITS images were left out", path, others)
            return [FileSource(argument, [_join(argument, i) if prefix else i for i in ids], paths)]
        if any(".tfrecord" in c.name for c in path.iterdir() if c.is_file()):
            return _shard_sources(argument, argument, prefix)
        raise DataError(path, "no .npy/FITS images (or TFRecord shards) in this folder, at any depth")
    if path.is_file():
        name = path.name.lower()
        if name.endswith(LIST_SUFFIXES):
            ids, paths = _read_list(path)
            return [FileSource(argument, [_join(str(path.parent), i) if prefix else i for i in ids],
                               paths)]
        if _is_image_name(name):
            return [FileSource(argument, [argument], [argument])]
        raise DataError(path, "not a survey: expected a folder, a .npy/FITS image, a file list "
                              "(.txt, one path a line) or TFRecord shards")
    raise DataError(path, "no such file or folder")


def _join(root: str, item_id: str) -> str:
    return f"{root.rstrip('/')}/{item_id}"


def _walk(root: Path) -> Tuple[List[str], List[str], int]:
    """(ids relative to root, paths) of the image files under root, any depth, and how many others."""
    found, others = [], 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(folder, root)
        for name in files:
            if name.startswith("."):
                continue
            if _is_image_name(name):
                found.append(name if rel == "." else f"{Path(rel).as_posix()}/{name}")
            elif name not in SIDECAR_FILES:
                others += 1
    found.sort(key=_natural_key)
    return found, [str(root / f) for f in found], others


def _read_list(path: Path) -> Tuple[List[str], List[str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot read the file list ({type(e).__name__})") from None
    ids = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not ids:
        raise DataError(path, "the file list names no files")
    return ids, [i if os.path.isabs(i) else str(path.parent / i) for i in ids]


def _shard_sources(argument: str, pattern: str, prefix: bool) -> list:
    from kerasssl.data.tfrecord import find_shards, read_manifest

    shards = find_shards(pattern)
    manifest, _ = read_manifest(shards)
    manifest = manifest or {}
    counts = {}
    if isinstance(manifest.get("files"), list) and isinstance(manifest.get("records_per_shard"), list):
        counts = dict(zip(manifest["files"], manifest["records_per_shard"]))
    axis = manifest.get("channel_axis") if manifest.get("channel_axis") in ("first", "last") else None
    base = argument if Path(argument).is_dir() else _glob_base(argument)
    sources = []
    for shard in shards:
        name = shard if prefix or "://" in shard else os.path.relpath(shard, base or ".")
        sources.append(ShardSource(argument, shard, Path(name).as_posix() if "://" not in name else name,
                                   counts.get(os.path.basename(shard)), axis))
    return sources


def _glob_base(pattern: str) -> str:
    """The folder part of a glob before its first wildcard."""
    head = pattern
    for i, ch in enumerate(pattern):
        if ch in _GLOB_CHARS:
            head = pattern[:i]
            break
    return os.path.dirname(head)


def _check_unique(survey: Survey) -> None:
    """Refuse an id that two arguments (or one file list) give: it would be scored twice."""
    first_source = {}  # id -> the source that gave it first
    for source in survey.sources:
        for item_id in source.ids if isinstance(source, FileSource) else [source.name]:
            if "\n" in item_id:
                raise DataError(item_id, "a file name with a line break cannot be an id")
            first = first_source.get(item_id)
            if first is None:
                first_source[item_id] = source
                continue
            if first is source:  # only a file list can name one file twice
                problem = f"listed twice in {source.argument}"
            elif first.argument == source.argument:
                problem = "given twice"
            else:
                problem = f"given by both {first.argument} and {source.argument}"
            raise DataError(source.path if isinstance(source, ShardSource) else item_id,
                            f"{problem}; give each image once")


# -- one image -------------------------------------------------------------------


def parse_example(serialized: bytes, where: str):
    """A serialized record -> ``tf.train.Example``; DataError naming ``where`` if it is not one."""
    import tensorflow as tf

    try:
        return tf.train.Example.FromString(serialized)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError differs across builds
        raise DataError(where, "not a tf.Example protocol buffer") from None


@dataclass
class ImageReader:
    """Raw array -> the model's (H, W, C) input, as ``kerasssl predict`` reads a file.

    Args:
        image_shape: the model input (H, W, C).
        channel_axis: "auto" (per file: the smallest axis holds the bands),
            "first" or "last".
        allow_pickle: read ``.npy`` object arrays (trusted files only).
    """

    image_shape: tuple
    channel_axis: str = "auto"
    allow_pickle: bool = False
    _known_header: Optional[tuple] = field(default=None, init=False, repr=False, compare=False)

    def read_file(self, path) -> np.ndarray:
        from kerasssl.data.arrays import read_array

        array = self._read_known_npy(path)
        if array is None:
            array = read_array(path, allow_pickle=self.allow_pickle)  # every check, then learn its header
            self._learn_header(path)
        return self.fit(array, path)

    # A survey's .npy files nearly all share one header (same dtype and shape).
    # Parsing it (np.load's literal_eval, plus the size check's own parse) costs
    # more than reading a small cutout, so a file whose header bytes equal the
    # last fully checked file's gets that file's verdict; only the size is checked again.

    def _read_known_npy(self, path):
        known = self._known_header
        if known is None or not str(path).lower().endswith(".npy"):
            return None
        prefix, shape, dtype, fortran, nbytes = known
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None  # read_array names the problem
        if not data.startswith(prefix) or len(data) < len(prefix) + nbytes:
            return None
        array = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=len(prefix))
        return array.reshape(shape, order="F" if fortran else "C").astype(np.float32)

    def _learn_header(self, path):
        import io

        if not str(path).lower().endswith(".npy"):
            return
        try:
            with open(path, "rb") as f:
                head = f.read(1 << 16)
            buffer = io.BytesIO(head)
            version = np.lib.format.read_magic(buffer)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(buffer)
        except (OSError, ValueError, EOFError):
            return
        if not dtype.hasobject:
            self._known_header = (head[:buffer.tell()], tuple(shape), dtype, bool(fortran),
                                  int(np.prod(shape)) * dtype.itemsize)

    def read_record(self, serialized: bytes, where: str, channel_axis=None) -> np.ndarray:
        """One serialized ``tf.Example`` with ``image`` (raw little-endian float32) and ``shape``."""
        return self.read_example(parse_example(serialized, where), where, channel_axis)

    def read_example(self, example, where: str, channel_axis=None) -> np.ndarray:
        """A parsed ``tf.train.Example`` (:func:`parse_example`), as :meth:`read_record` reads it."""
        feature = example.features.feature
        if "image" not in feature or not feature["image"].bytes_list.value:
            raise DataError(where, "missing feature 'image'")
        if "shape" not in feature or not feature["shape"].int64_list.value:
            raise DataError(where, "missing feature 'shape'")
        shape = [int(d) for d in feature["shape"].int64_list.value]
        data = feature["image"].bytes_list.value[0]
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise DataError(where, f"shape {shape} is not a 2-D or 3-D image shape")
        if len(data) != 4 * int(np.prod(shape)):
            raise DataError(where, f"image has {len(data)} bytes but shape {shape} needs {4 * int(np.prod(shape))}")
        array = np.frombuffer(data, dtype="<f4").reshape(shape).astype(np.float32)
        return self.fit(array, where, channel_axis)

    def fit(self, array, where, channel_axis=None) -> np.ndarray:
        from kerasssl.data.arrays import check_finite_bands, to_hwc
        from kerasssl.data.imageset import center_crop

        image = to_hwc(array, where, channel_axis or self.channel_axis)
        height, width, channels = self.image_shape
        if image.shape[-1] != channels:
            raise DataError(where, f"has {image.shape[-1]} band(s); the model takes {channels}")
        if image.shape[0] < height or image.shape[1] < width:
            raise DataError(where, f"image is {image.shape[0]}x{image.shape[1]}, smaller than the model "
                                   f"input {height}x{width} (images are cropped, never padded)")
        image = center_crop(image, (height, width))
        check_finite_bands(image, where)
        return np.ascontiguousarray(image, dtype=np.float32)


# -- streaming ---------------------------------------------------------------------


@dataclass
class Batch:
    """What one step of :func:`stream` gives.

    Args:
        next_position: ``(source index, offset)`` to :func:`stream` from to
            continue after this batch.
        ids: ids of the good images, one per row of ``images``.
        images: float32 [n, H, W, C] raw pixels (a tf.Tensor; n may be 0).
        bad: ``(id, where, problem)`` of the items that could not be used.
    """

    next_position: Tuple[int, int]
    ids: List[str]
    images: object
    bad: List[Tuple[str, str, str]]


#: What reading one item may raise that makes it a bad item (anything else is a bug: raised).
READ_ERRORS = (KerassslError, OSError, ValueError)


def _problem(error) -> str:
    if isinstance(error, DataError):
        return error.problem
    if isinstance(error, KerassslError):
        return str(error)
    return f"cannot read ({type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''})"


class _Problems:
    """Problems found by reader threads, keyed by item offset (read back by the consumer)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items = {}

    def put(self, offset, where, problem):
        with self._lock:
            self._items[int(offset)] = (where, problem)

    def pop(self, offset):
        with self._lock:
            return self._items.pop(int(offset), ("?", "unreadable"))


def stream(survey: Survey, reader: ImageReader, batch_size: int = 64, *,
           start: Tuple[int, int] = (0, 0)) -> Iterator[Batch]:
    """Batches of the survey's images in listing order, from ``start`` = (source, offset).

    tf.data reads whole batches in parallel threads (``num_parallel_calls``
    AUTOTUNE, in order) and prefetches, so at most a few batches are in memory.
    A shard whose TFRecord framing is corrupt yields its readable records, then
    one bad item ``shard:k`` for the rest.
    """
    if batch_size < 1:
        raise KerassslError(f"batch size must be >= 1, got {batch_size}")
    first, offset = start
    for index in range(first, len(survey.sources)):
        source = survey.sources[index]
        at = offset if index == first else 0
        if isinstance(source, FileSource):
            yield from _file_batches(index, source, reader, batch_size, at)
        else:
            yield from _shard_batches(index, source, reader, batch_size, at)


def _file_batches(index, source, reader, batch_size, start):
    import tensorflow as tf

    if start >= len(source):
        return
    problems = _Problems()
    shape = tuple(reader.image_shape)

    def read(offsets):
        images = np.zeros((len(offsets),) + shape, np.float32)
        ok = np.ones(len(offsets), np.bool_)
        for row, k in enumerate(offsets):
            path = source.paths[int(k)]
            try:
                images[row] = reader.read_file(path)
            except READ_ERRORS as e:
                ok[row] = False
                problems.put(k, path, _problem(e))
        return images, ok

    offsets = tf.data.Dataset.range(start, len(source)).batch(batch_size)
    data = offsets.map(lambda k: (k, *_numpy_read(read, k, shape)),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for offsets_, images, ok in data.prefetch(2):
        offsets_ = offsets_.numpy()
        yield _batch(index, offsets_, ok.numpy(), images, source.ids, problems)


def _numpy_read(fn, arg, shape):
    import tensorflow as tf

    images, ok = tf.numpy_function(fn, [arg], (tf.float32, tf.bool), stateful=False)
    return tf.ensure_shape(images, (None,) + shape), tf.ensure_shape(ok, (None,))


def _batch(index, offsets, ok, images, ids_of, problems):
    import tensorflow as tf

    ids = [ids_of[int(k)] if isinstance(ids_of, list) else ids_of(int(k)) for k in offsets[ok]]
    bad = []
    for k in offsets[~ok]:
        where, problem = problems.pop(k)
        item_id = ids_of[int(k)] if isinstance(ids_of, list) else ids_of(int(k))
        bad.append((item_id, where, problem))
    if bad:
        images = tf.boolean_mask(images, ok)
    return Batch((index, int(offsets[-1]) + 1), ids, images, bad)


def _shard_batches(index, source, reader, batch_size, start):
    import tensorflow as tf

    problems = _Problems()
    shape = tuple(reader.image_shape)

    def ids_of(k):
        return f"{source.name}:{k}"

    def decode(offsets, records):
        images = np.zeros((len(offsets),) + shape, np.float32)
        ok = np.ones(len(offsets), np.bool_)
        for row, (k, record) in enumerate(zip(offsets, records)):
            where = f"{source.path}: record {int(k)}"
            try:
                images[row] = reader.read_record(record, where, source.channel_axis)
            except READ_ERRORS as e:
                ok[row] = False
                problems.put(k, source.path, f"record {int(k)}: {_problem(e)}")
        return images, ok

    def read_batch(k, records):
        images, ok = tf.numpy_function(decode, [k, records], (tf.float32, tf.bool), stateful=False)
        return k, tf.ensure_shape(images, (None,) + shape), tf.ensure_shape(ok, (None,))

    done = start
    records = _records(source.path).skip(start).enumerate(start).batch(batch_size)
    data = records.map(read_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(2)
    try:
        for offsets, images, ok in data:
            offsets = offsets.numpy()
            done = int(offsets[-1]) + 1
            yield _batch(index, offsets, ok.numpy(), images, ids_of, problems)
    except tf.errors.OpError as error:
        # The framing may be broken at or after `done`: read on one record at a time to find where.
        readable, broken_at, problem = _readable_from(source.path, done)
        if problem is None:  # every record reads: the error was not the shard's
            raise error
        if readable:
            offsets = np.arange(done, done + len(readable))
            images, ok = decode(offsets, readable)
            yield _batch(index, offsets, ok, tf.constant(images), ids_of, problems)
        problem = f"{problem}: the rest of the shard cannot be read"
        # continue with the next source: nothing after the break can be read
        yield Batch((index + 1, 0), [], tf.zeros((0,) + shape), [(ids_of(broken_at), source.path, problem)])
        if source.count is not None and broken_at + 1 < source.count:
            log.warning("%s: %d record(s) after record %d are lost", source.path, source.count - broken_at - 1,
                        broken_at)


def _records(path):
    import tensorflow as tf

    from kerasssl.data.tfrecord.shards import compression_of

    return tf.data.TFRecordDataset(path, compression_type=compression_of(path))


def _readable_from(path, start):
    """(records from ``start`` up to the broken one, its index, the problem or None if none is broken)."""
    from kerasssl.data.tfrecord.shards import read_records

    readable = []
    try:
        for k, record in read_records(path):  # sequential: names the record where the framing breaks
            if k >= start:
                readable.append(record)
    except DataError as e:
        return readable, start + len(readable), e.problem
    return readable, start + len(readable), None
