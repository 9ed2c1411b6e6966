"""Scan a survey with a classifier: a catalogue of candidates, sorted by lens probability.

:func:`scan_survey` streams the survey (:mod:`kerasssl.survey`: folders at any
depth, file lists, TFRecord shards) through a model (:mod:`kerasssl.inference`:
``.keras``, SavedModel or ``.tflite``) in batches and keeps only the scores, so
memory does not grow with the images. The catalogue has one row per image,
highest lens probability first: ``id``, ``lens_probability`` and, for a
multi-class model, ``p_<class>`` for each other class; ``top`` / ``threshold``
cut it; CSV, or Parquet (pyarrow) for big runs. ``embeddings`` also writes the
encoder's features as an ``.npy`` whose row i belongs to the catalogue's row i.

Resumable: results are appended chunk by chunk to a work folder beside the
output (``OUT.work/``: ``meta.json`` with the fingerprints of the survey listing,
the model and the options; ``chunks.jsonl``, one line per committed chunk: its
ids, skipped items and the stream position after it; ``probabilities.f32`` and
``features.f32``, the raw rows). A chunk counts once its line is complete, so a
scan killed at any moment resumes (``resume=True``) exactly after the last
whole chunk: no row twice, none missing. The catalogue is written atomically
at the end, then the work folder is removed.

Bad files: strict by default (a :class:`DataError` naming the first one and
nothing written: the work folder is rolled back); ``skip_bad`` skips them and
lists them in ``OUT.skipped.txt``.

Example:
    >>> result = scan_survey("run/classifier.keras", ["survey/"], "candidates.csv", top=1000)
    >>> result.rows, round(result.images_per_second)
    (1000, 5230)
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np

from kerasssl.errors import DataError, KerassslError
from kerasssl.inference import lens_column, load_survey_model
from kerasssl.rundir import replacing, write_text_atomic
from kerasssl.survey import ImageReader, list_survey, stream

log = logging.getLogger(__name__)

WORK_FORMAT = 1
FORMATS = ("csv", "parquet")
#: A chunk is committed after this many items or seconds, whichever comes first.
COMMIT_ITEMS = 4096
COMMIT_SECONDS = 30.0


@dataclass
class ScanResult:
    """What a scan wrote.

    Args:
        out: the catalogue.
        rows: rows in it (after ``top`` / ``threshold``).
        scanned: images scored in all (this run and the runs it resumed).
        skipped: ``(id, "where: problem")`` of the items skipped (``skip_bad``).
        seconds / images_per_second: this run's streaming time and rate.
        embeddings / skipped_file: the other files written, or None.
    """

    out: Path
    rows: int
    scanned: int
    skipped: List[tuple] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0
    embeddings: Optional[Path] = None
    skipped_file: Optional[Path] = None


def output_format(out, fmt=None) -> str:
    """``fmt`` if given, else "parquet" for a ``.parquet`` / ``.pq`` name, else "csv".

    A name whose suffix says the other format is refused: CSV bytes in
    ``cands.parquet`` would be read back as a broken Parquet file.
    """
    name = str(out).lower()
    implied = "parquet" if name.endswith((".parquet", ".pq")) else "csv" if name.endswith(".csv") else None
    if fmt is None:
        return implied or "csv"
    if fmt not in FORMATS:
        raise KerassslError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if implied is not None and implied != fmt:
        raise DataError(out, f"is a .{name.rsplit('.', 1)[-1]} name but --format is {fmt}; "
                             "make them agree (or drop --format)")
    return fmt


def work_dir_of(out) -> Path:
    return Path(f"{out}.work")


def skipped_file_of(out) -> Path:
    return Path(f"{out}.skipped.txt")


def scan_survey(model, survey, out, *, top: Optional[int] = None, threshold: Optional[float] = None,
                fmt: Optional[str] = None, embeddings=None, batch_size: int = 64, resume: bool = False,
                skip_bad: bool = False, lens_class: Optional[str] = None, channel_axis: str = "auto",
                allow_pickle: bool = False, progress: Optional[bool] = None,
                commit_items: int = COMMIT_ITEMS, commit_seconds: float = COMMIT_SECONDS) -> ScanResult:
    """Score every image of ``survey`` with ``model``; write the sorted catalogue to ``out``.

    Args:
        model: a path (``.keras``, SavedModel dir or ``BASE/NAME``, ``.tflite``)
            or a loaded :class:`kerasssl.inference.SurveyModel`.
        survey: SURVEY arguments (see :mod:`kerasssl.survey`).
        out: the catalogue file.
        top: keep the ``top`` most probable lenses only.
        threshold: keep rows with ``lens_probability >= threshold`` only.
        fmt: "csv" or "parquet" (default: from the suffix of ``out``, else csv).
        embeddings: an ``.npy`` path for the encoder's features, aligned with the rows.
        batch_size: images per model call.
        resume: continue the interrupted scan whose work folder is beside ``out``
            (starts afresh when there is none).
        skip_bad: skip unreadable items (listed in ``OUT.skipped.txt``) instead of stopping.
        lens_class: the lens class of a multi-class model (see :func:`kerasssl.inference.lens_column`).
        channel_axis / allow_pickle: how files are read (as ``kerasssl predict``).
        progress: a progress bar on stderr (None: when stderr is a terminal).
        commit_items / commit_seconds: how often a chunk is committed to the work folder.

    Returns:
        :class:`ScanResult`.

    Raises:
        DataError / KerassslError: bad input (nothing written), a work folder
            from another scan, an existing work folder without ``resume``.
    """
    out = Path(out)
    fmt = output_format(out, fmt)
    _check_cut(top, threshold)
    if out.is_dir():
        raise DataError(out, "is a folder; --out names the catalogue file")
    if embeddings is not None:
        _check_embeddings_path(Path(embeddings), out)
    listing = list_survey(survey if isinstance(survey, (list, tuple)) else [survey])
    loaded = model if hasattr(model, "run") else load_survey_model(model)
    loaded.require(probabilities=True, why=" to scan with")
    if embeddings is not None:
        loaded.require(features=True, why=" for --embeddings")
    column = lens_column(loaded.class_names, lens_class)
    meta = {
        "format": WORK_FORMAT,
        "listing": listing.fingerprint(),
        "model": loaded.fingerprint(),
        "options": {"channel_axis": channel_axis, "allow_pickle": bool(allow_pickle),
                    "embeddings": embeddings is not None, "image_shape": list(loaded.image_shape)},
        "n_classes": len(loaded.class_names),
        "model_path": str(loaded.path),
        "survey": listing.arguments,
    }
    work = WorkFile(work_dir_of(out))
    if work.exists() and not resume:
        raise DataError(work.dir, "an interrupted scan's work folder is here: pass --resume to continue it, "
                                  "or delete it to start again")
    if resume and work.exists():
        work.open(meta)
    else:
        work.create(meta)

    reader = ImageReader(tuple(loaded.image_shape), channel_axis, bool(allow_pickle))
    started = time.perf_counter()
    done_before = work.items
    try:
        _stream_into(work, listing, reader, loaded, batch_size, skip_bad, embeddings is not None,
                     progress, commit_items, commit_seconds)
        if work.items == 0:  # e.g. only empty TFRecord shards: an empty catalogue would hide it
            raise DataError(", ".join(listing.arguments), "holds no images to scan")
    except KerassslError:
        work.rollback()  # bad input: nothing written (a resumed scan keeps what it had)
        raise
    seconds = time.perf_counter() - started
    result = _finish(work, out, fmt, column, loaded.class_names, top, threshold, embeddings)
    result.seconds = seconds
    result.images_per_second = (work.items - done_before) / seconds if seconds > 0 else 0.0
    work.remove()
    return result


def _check_embeddings_path(path, out):
    """Before the scan, not after it: a folder or a name taken by another output fails here."""
    if path.is_dir():
        raise DataError(path, "is a folder; --embeddings names the .npy file")
    taken = {out.resolve(): "--out", skipped_file_of(out).resolve(): "the skipped-items list"}
    if path.resolve() in taken:
        raise DataError(path, f"is also {taken[path.resolve()]}; give --embeddings its own file")


def _check_cut(top, threshold):
    if top is not None and top < 1:
        raise KerassslError(f"--top must be >= 1, got {top}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise KerassslError(f"--threshold must be a probability in [0, 1], got {threshold}")


def _stream_into(work, listing, reader, model, batch_size, skip_bad, with_features, progress,
                 commit_items, commit_seconds):
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = tqdm(total=listing.total, initial=work.items, unit="img", disable=not show, file=sys.stderr,
               smoothing=0.05, mininterval=0.5, dynamic_ncols=True)
    pending = _Pending()
    last_commit = time.monotonic()
    try:
        for batch in stream(listing, reader, batch_size, start=work.position):
            if batch.bad and not skip_bad:
                _, where, problem = batch.bad[0]
                raise DataError(where, f"{problem} (--skip-bad skips unreadable files)")
            probabilities, features = model.run(batch.images, probabilities=True, features=with_features)
            pending.add(batch, probabilities, features)
            bar.update(len(batch.ids) + len(batch.bad))
            if pending.items >= commit_items or time.monotonic() - last_commit >= commit_seconds:
                work.append(pending)
                pending, last_commit = _Pending(), time.monotonic()
        work.append(pending)
    except KeyboardInterrupt:
        work.append(pending)  # what was scored is kept for --resume
        raise
    finally:
        bar.close()


class _Pending:
    """Rows scored since the last commit."""

    def __init__(self):
        self.ids, self.skipped, self.probabilities, self.features = [], [], [], []
        self.position = None
        self.items = 0

    def add(self, batch, probabilities, features):
        self.ids.extend(batch.ids)
        self.skipped.extend([item_id, f"{where}: {problem}"] for item_id, where, problem in batch.bad)
        self.probabilities.append(probabilities)
        if features is not None and len(features):
            self.features.append(features)
        self.position = list(batch.next_position)
        self.items += len(batch.ids) + len(batch.bad)


# -- the work folder -----------------------------------------------------------------


class WorkFile:
    """The work folder of one scan (see the module docstring): append chunks, resume, roll back."""

    META, CHUNKS, PROBABILITIES, FEATURES = "meta.json", "chunks.jsonl", "probabilities.f32", "features.f32"

    def __init__(self, path):
        self.dir = Path(path)
        self.meta = None
        self.rows = self.items = 0
        self.position = (0, 0)
        self._dim = None
        self._created = False
        self._sizes = None

    def exists(self) -> bool:
        return (self.dir / self.META).is_file()

    def create(self, meta):
        try:
            if self.dir.exists():
                shutil.rmtree(self.dir)  # a folder without meta.json: a create that never finished
            self.dir.mkdir(parents=True)
            for name in (self.CHUNKS, self.PROBABILITIES, self.FEATURES):
                (self.dir / name).touch()
            write_text_atomic(self.dir / self.META, json.dumps(meta, indent=1))
        except OSError as e:
            raise KerassslError(f"{self.dir}: cannot write the scan's work folder ({e.strerror or e})") from None
        self.meta, self._created = meta, True
        self._sizes = self._file_sizes()

    def open(self, meta):
        """Resume: check the fingerprints, drop a chunk that was being written when the scan died."""
        try:
            recorded = json.loads((self.dir / self.META).read_text())
        except (OSError, ValueError):
            raise DataError(self.dir / self.META, "unreadable; delete the work folder to start again") from None
        for key, what in (("format", "work folder format"), ("listing", "survey listing"),
                          ("model", "model"), ("options", "reading options (--channels-*, --allow-pickle, "
                                                         "--embeddings)")):
            if recorded.get(key) != meta[key]:
                raise DataError(self.dir, f"was made by a scan with another {what}; "
                                          "delete it to start again, or rerun the scan it belongs to")
        self.meta = recorded
        good_end, rows, items, position = 0, 0, 0, (0, 0)
        with open(self.dir / self.CHUNKS, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn last line: that chunk never committed
                try:
                    chunk = json.loads(line)
                except ValueError:
                    break
                good_end += len(line)
                rows += chunk["rows"]
                items += chunk["rows"] + len(chunk["skipped"])
                position = tuple(chunk["next"])
        self.rows, self.items, self.position = rows, items, position
        k = meta["n_classes"]
        self._truncate(self.CHUNKS, good_end)
        self._truncate(self.PROBABILITIES, rows * k * 4, strict=True)
        features = self.dir / self.FEATURES
        if features.stat().st_size and rows:
            dims = {c["dim"] for c in self.chunks() if c.get("dim")}
            self._dim = dims.pop() if len(dims) == 1 else None
            if self._dim is None:
                raise DataError(self.dir, "damaged work folder (features of different sizes); delete it")
        self._truncate(self.FEATURES, rows * (self._dim or 0) * 4, strict=True)
        self._sizes = self._file_sizes()
        log.info("resuming %s: %d image(s) already done", self.dir, items)

    def _truncate(self, name, size, strict=False):
        path = self.dir / name
        if path.stat().st_size < size and strict:
            raise DataError(self.dir, f"damaged work folder ({name} is shorter than its chunks say); delete it")
        with open(path, "r+b") as f:
            f.truncate(size)

    def _file_sizes(self):
        return {name: (self.dir / name).stat().st_size for name in (self.CHUNKS, self.PROBABILITIES, self.FEATURES)}

    def append(self, pending: _Pending):
        if pending.items == 0:
            return
        chunk = {"rows": len(pending.ids), "ids": pending.ids, "skipped": pending.skipped,
                 "next": pending.position}
        with open(self.dir / self.PROBABILITIES, "ab") as f:
            for p in pending.probabilities:
                f.write(np.ascontiguousarray(p, "<f4").tobytes())
            _sync(f)
        if pending.features:
            features = np.concatenate(pending.features).astype("<f4")
            chunk["dim"] = int(features.shape[1]) if len(features) else self._dim
            self._dim = chunk["dim"]
            with open(self.dir / self.FEATURES, "ab") as f:
                f.write(features.tobytes())
                _sync(f)
        # The commit point: a chunk exists once its whole line is on disk.
        with open(self.dir / self.CHUNKS, "ab") as f:
            f.write((json.dumps(chunk, separators=(",", ":")) + "\n").encode())
            _sync(f)
        self.rows += len(pending.ids)
        self.items += pending.items
        self.position = tuple(pending.position)

    def rollback(self):
        """Back to the state this run found: a new work folder goes, a resumed one keeps its chunks."""
        if self._created:
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        for name, size in (self._sizes or {}).items():
            with open(self.dir / name, "r+b") as f:
                f.truncate(size)

    def chunks(self):
        with open(self.dir / self.CHUNKS, "rb") as f:
            for line in f:
                yield json.loads(line)

    def probabilities(self):
        k = self.meta["n_classes"]
        return np.fromfile(self.dir / self.PROBABILITIES, dtype="<f4").reshape(-1, k)

    def features(self):
        """The features as a read-only memmap (rows x dim), or None."""
        if not self._dim or not self.rows:
            return None
        return np.memmap(self.dir / self.FEATURES, dtype="<f4", mode="r", shape=(self.rows, self._dim))

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def _sync(f):
    f.flush()
    os.fsync(f.fileno())


# -- the catalogue -------------------------------------------------------------------


def _finish(work, out, fmt, column, class_names, top, threshold, embeddings):
    ids, skipped = [], []
    for chunk in work.chunks():
        ids.extend(chunk["ids"])
        skipped.extend(tuple(s) for s in chunk["skipped"])
    probabilities = work.probabilities()
    if len(probabilities) != len(ids):
        raise DataError(work.dir, "damaged work folder (ids and probabilities differ in number); delete it")
    lens = probabilities[:, column]
    order = np.argsort(-lens, kind="stable")  # NaN last; ties keep the listing order
    if threshold is not None:
        order = order[lens[order] >= threshold]
    if top is not None:
        order = order[:top]
    others = [k for k in range(len(class_names)) if k != column] if len(class_names) > 2 else []
    columns = {"id": [ids[i] for i in order], "lens_probability": lens[order]}
    for k in others:
        columns[f"p_{class_names[k]}"] = probabilities[order, k]

    out.parent.mkdir(parents=True, exist_ok=True)
    result = ScanResult(out=out, rows=len(order), scanned=len(ids), skipped=skipped)
    if embeddings is not None:
        result.embeddings = _write_embeddings(Path(embeddings), work.features(), order)
    listed = skipped_file_of(out)
    if skipped:
        write_text_atomic(listed, "".join(f"{item_id}\t{problem}\n" for item_id, problem in skipped))
        result.skipped_file = listed
    elif listed.exists():
        listed.unlink()  # an earlier scan's list would describe another run
    (_write_parquet if fmt == "parquet" else _write_csv)(out, columns)
    return result


def _write_csv(out, columns):
    names = list(columns)
    values = [columns[n] for n in names]
    with replacing(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        for row in zip(*values):
            # float32 to 9 significant digits: the exact value back when read
            writer.writerow([row[0]] + [f"{float(v):.9g}" for v in row[1:]])


def _write_parquet(out, columns):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise KerassslError("--format parquet needs pyarrow: pip install 'kerasssl[survey]'") from None
    table = pa.table({name: (pa.array(v, pa.string()) if name == "id" else pa.array(np.asarray(v, np.float32)))
                      for name, v in columns.items()})
    with replacing(out) as tmp:
        pq.write_table(table, tmp)


def _write_embeddings(path, features, order):
    dim = features.shape[1] if features is not None else 0
    with replacing(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(order), dim))
        for start in range(0, len(order), 65536):
            rows = order[start:start + 65536]
            array[start:start + len(rows)] = features[rows]
        array.flush()
        del array
    return path


def read_catalogue(path):
    """A catalogue back as ``{column: list}`` (CSV or Parquet), e.g. for tests and notebooks."""
    path = Path(path)
    if output_format(path) == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pydict()
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    return {name: [r[i] if name == "id" else float(r[i]) for r in body] for i, name in enumerate(header)}
