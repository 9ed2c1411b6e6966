"""``kerasssl scan --runner beam``: the survey scan as an Apache Beam pipeline.

The same survey listing (:func:`kerasssl.survey.list_survey`: folders at any
depth, file lists, TFRecord shards) and the same reader
(:class:`kerasssl.survey.ImageReader`) as the local scan, then RunInference
(``apache_beam.ml.inference``) with the exported SavedModel's
``serving_default`` signature, so a row's probabilities equal the local scan's.

The pipeline::

    Create(work items: chunks of files, one item per shard) -> Reshuffle
      -> ReadImages (id, raw image) | bad items to a side output
      -> RunInference(KeyedModelHandler(SavedModelHandler))
      -> rows (threshold, top) -> WriteToText PATH-00000-of-0000N.csv

Beam's own ``TFModelHandlerNumpy`` loads models with
``tf.keras.models.load_model`` through tensorflow_hub; Keras 3 cannot load a
SavedModel that way, so :class:`SavedModelHandler` loads it with
``tf.saved_model.load`` (kerasssl's one loader) in each worker.

Runner: the DirectRunner in multi-processing mode by default (one worker per
CPU); any other runner is a pipeline option (``runner=FlinkRunner`` with
``flink_master=...``, ``runner=SparkRunner``, ``runner=DataflowRunner`` with
``project``, ``region``, ``temp_location``): ``beam_options`` are passed to
Beam as ``--KEY=VALUE``.

The shards are written in a hidden folder beside PATH and renamed into place
when the pipeline has finished and no item was bad (strict mode), so a failed
or refused scan leaves no shard behind. Rows are not sorted across shards
(a global sort does not scale; ``top`` gives the K best, sorted, in one shard).

Example:
    >>> result = scan_with_beam("saved_models/lens_finder", ["survey/"], "cand.csv",
    ...                         beam_options=["direct_num_workers=4"])
    >>> [p.name for p in result.files]
    ['cand-00000-of-00004.csv', ...]
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from kerasssl.errors import DataError, KerassslError
from kerasssl.inference import lens_column, load_survey_model
from kerasssl.pipelines import check_saved_model
from kerasssl.survey import READ_ERRORS, FileSource, ImageReader, _problem, list_survey

log = logging.getLogger(__name__)

#: Image files per work item: the unit a Beam worker reads (shards are one item each).
FILES_PER_ITEM = 256
NAMESPACE = "kerasssl.scan"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
SUFFIX = ".csv"


@dataclass
class BeamScanResult:
    """What a Beam scan wrote.

    Args:
        files: the catalogue shards, in shard order.
        rows: rows written; scanned: images scored; skipped: ``(id, "where: problem")``.
        seconds: the pipeline's wall time.
    """

    files: List[str]
    rows: int
    scanned: int
    skipped: List[tuple] = field(default_factory=list)
    seconds: float = 0.0
    skipped_file: Optional[str] = None


def shard_prefix(out) -> str:
    """PATH without a ``.csv`` suffix: shards are ``PREFIX-00000-of-0000N.csv``."""
    out = str(out)
    return out[:-len(SUFFIX)] if out.lower().endswith(SUFFIX) else out


def pipeline_flags(beam_options: Sequence[str] = ()) -> List[str]:
    """Beam command-line flags from ``KEY=VALUE`` (or ``KEY`` for a flag without value) options.

    Without a ``runner`` option: the DirectRunner, multi-processing, one
    worker per CPU (``direct_num_workers`` overrides it).

    Example:
        >>> pipeline_flags(["direct_num_workers=2"])
        ['--direct_num_workers=2', '--runner=DirectRunner', '--direct_running_mode=multi_processing']
    """
    flags, keys = [], set()
    for option in beam_options:
        key, sep, value = str(option).partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise KerassslError(f"--beam-option {option!r}: expected KEY=VALUE (a Beam pipeline option)")
        keys.add(key)
        flags.append(f"--{key}={value}" if sep else f"--{key}")
    if "runner" not in keys:
        flags.append("--runner=DirectRunner")
    runner = next((f.split("=", 1)[1] for f in flags if f.startswith("--runner=")), "DirectRunner")
    if runner in ("DirectRunner", "direct"):
        if "direct_running_mode" not in keys:
            flags.append("--direct_running_mode=multi_processing")
        if "direct_num_workers" not in keys:
            flags.append(f"--direct_num_workers={max(1, os.cpu_count() or 1)}")
    return flags


def work_items(listing) -> list:
    """Picklable work items: ``("files", ids, paths)`` chunks and ``("shard", name, path, channel_axis)``."""
    items = []
    for source in listing.sources:
        if isinstance(source, FileSource):
            for start in range(0, len(source), FILES_PER_ITEM):
                items.append(("files", source.ids[start:start + FILES_PER_ITEM],
                              source.paths[start:start + FILES_PER_ITEM]))
        else:
            items.append(("shard", source.name, source.path, source.channel_axis))
    return items


class ReadImages(beam.DoFn):
    """A work item -> ``(id, float32 (H, W, C) raw image)``; bad items to the ``bad`` output."""

    BAD = "bad"

    def __init__(self, image_shape, channel_axis, allow_pickle):
        self.reader = ImageReader(tuple(image_shape), channel_axis, bool(allow_pickle))
        self.read_counter = beam.metrics.Metrics.counter(NAMESPACE, "images_read")
        self.bad_counter = beam.metrics.Metrics.counter(NAMESPACE, "bad_items")

    def process(self, item):
        if item[0] == "files":
            _, ids, paths = item
            for item_id, path in zip(ids, paths):
                try:
                    image = self.reader.read_file(path)
                except READ_ERRORS as e:
                    yield self._bad(item_id, path, _problem(e))
                    continue
                self.read_counter.inc()
                yield item_id, image
        else:
            yield from self._shard(*item[1:])

    def _shard(self, name, path, channel_axis):
        from kerasssl.data.tfrecord.shards import read_records

        k = 0
        try:
            for k, record in read_records(path):
                try:
                    image = self.reader.read_record(record, f"{path}: record {k}", channel_axis)
                except READ_ERRORS as e:
                    yield self._bad(f"{name}:{k}", path, f"record {k}: {_problem(e)}")
                else:
                    self.read_counter.inc()
                    yield f"{name}:{k}", image
                k += 1  # a shard that breaks now breaks at the next record
        except DataError as e:
            yield self._bad(f"{name}:{k}", path, f"{e.problem}: the rest of the shard cannot be read")

    def _bad(self, item_id, where, problem):
        self.bad_counter.inc()
        return beam.pvalue.TaggedOutput(self.BAD, json.dumps([item_id, where, problem]))


class SavedModelHandler(ModelHandler):
    """RunInference with a kerasssl SavedModel's ``serving_default``: raw images -> probabilities.

    Args:
        path: the SavedModel version dir (or BASE/NAME: its latest version).
        min_batch_size / max_batch_size: how Beam batches the images per model call.

    Example:
        >>> images | RunInference(SavedModelHandler("saved_models/lens_finder/1"))
    """

    def __init__(self, path, min_batch_size=1, max_batch_size=64):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self._path = str(path)

    def load_model(self):
        return load_survey_model(self._path)

    def run_inference(self, batch, model, inference_args=None):
        probabilities, _ = model.run(np.stack(batch), probabilities=True)
        # The image is not kept in the result: only its probabilities go on.
        return [PredictionResult(None, p, self._path) for p in probabilities]

    def get_num_bytes(self, batch):
        return sum(image.nbytes for image in batch)

    def get_metrics_namespace(self):
        return NAMESPACE


def csv_line(values) -> str:
    """One CSV row as the local scan writes it (ids quoted as needed, float32 to 9 digits)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="")
    writer.writerow([values[0]] + [f"{float(v):.9g}" for v in values[1:]])
    return buffer.getvalue()


def _row(keyed, column, others):
    item_id, result = keyed
    p = np.asarray(result.inference, np.float32)
    return (item_id, float(p[column])) + tuple(float(p[k]) for k in others)


def scan_with_beam(model, survey, out, *, top: Optional[int] = None, threshold: Optional[float] = None,
                   batch_size: int = 64, skip_bad: bool = False, lens_class: Optional[str] = None,
                   channel_axis: str = "auto", allow_pickle: bool = False, num_shards: int = 0,
                   beam_options: Sequence[str] = ()) -> BeamScanResult:
    """Score every image of ``survey`` with a SavedModel on Beam; write ``PATH-SSSSS-of-NNNNN.csv``.

    Args:
        model: a SavedModel version dir or ``BASE/NAME``.
        survey: SURVEY arguments (see :mod:`kerasssl.survey`).
        out: PATH of the shards (a ``.csv`` suffix is dropped from the prefix).
        top / threshold / lens_class / channel_axis / allow_pickle: as :func:`kerasssl.scan.scan_survey`.
        batch_size: the most images per model call (Beam batches adaptively up to it).
        skip_bad: skip unreadable items (listed in ``PREFIX.skipped.txt``) instead of refusing.
        num_shards: output shards (0: the runner decides; 1 with ``top``).
        beam_options: ``KEY=VALUE`` Beam pipeline options (see :func:`pipeline_flags`).

    Raises:
        DataError / KerassslError: bad input; nothing written.
    """
    if top is not None and top < 1:
        raise KerassslError(f"--top must be >= 1, got {top}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise KerassslError(f"--threshold must be a probability in [0, 1], got {threshold}")
    prefix = shard_prefix(out)
    if Path(prefix).is_dir():
        raise DataError(prefix, "is a folder; --out names the catalogue (its shards are PATH-00000-of-0000N.csv)")
    flags = pipeline_flags(beam_options)
    path = check_saved_model(model)
    loaded = load_survey_model(path)
    loaded.require(probabilities=True, why=" to scan with")
    column = lens_column(loaded.class_names, lens_class)
    names = loaded.class_names
    others = [k for k in range(len(names)) if k != column] if len(names) > 2 else []
    header = ",".join(["id", "lens_probability"] + [f"p_{names[k]}" for k in others])
    listing = list_survey(survey if isinstance(survey, (list, tuple)) else [survey])
    items = work_items(listing)

    staging = _staging_dir(prefix)
    staged_prefix = FileSystems.join(staging, os.path.basename(prefix))
    started = time.perf_counter()
    try:
        pipeline = beam.Pipeline(options=PipelineOptions(flags))
        read = (pipeline
                | "ListSurvey" >> beam.Create(items, reshuffle=False)
                | "Spread" >> beam.Reshuffle()
                | "ReadImages" >> beam.ParDo(ReadImages(loaded.image_shape, channel_axis, allow_pickle))
                .with_outputs(ReadImages.BAD, main="images"))
        # Full batches within a bundle (Beam would start at 1 and grow): a scan wants throughput.
        handler = KeyedModelHandler(SavedModelHandler(loaded.path, min_batch_size=batch_size,
                                                      max_batch_size=batch_size))
        rows = (read.images
                | "RunInference" >> RunInference(handler)
                | "Rows" >> beam.Map(_row, column, others))
        if threshold is not None:
            rows = rows | "Threshold" >> beam.Filter(lambda r, t: r[1] >= t, threshold)
        if top is not None:
            rows = (rows
                    | "Top" >> beam.combiners.Top.Of(top, key=lambda r: r[1])
                    | "Unlist" >> beam.FlatMap(lambda best: best))
            num_shards = 1
        (rows
         | "Count" >> beam.Map(_counted)
         | "CsvLines" >> beam.Map(csv_line)
         | "WriteCatalogue" >> beam.io.WriteToText(staged_prefix, file_name_suffix=SUFFIX, header=header,
                                                    num_shards=num_shards, shard_name_template=SHARD_TEMPLATE))
        (read.bad | "WriteBad" >> beam.io.WriteToText(staged_prefix + ".bad", file_name_suffix=".jsonl",
                                                      num_shards=1, shard_name_template=""))
        result = pipeline.run()
        result.wait_until_finish()
        seconds = time.perf_counter() - started
        bad = _read_bad(staged_prefix + ".bad.jsonl")
        if bad and not skip_bad:
            item_id, where, problem = bad[0]
            raise DataError(where, f"{problem} (--skip-bad skips unreadable files)")
        counters = _counters(result)
        # As the local scan: an empty catalogue would hide it. (A counter never incremented is
        # not reported; a runner without metrics gives None, and then nothing can be said.)
        if counters is not None and not counters.get("images_read") and not bad:
            raise DataError(", ".join(listing.arguments), "holds no images to scan")
        counters = counters or {}
        files = _publish(staged_prefix, prefix)
    finally:
        _remove(staging)
    skipped = [(item_id, f"{where}: {problem}") for item_id, where, problem in bad]
    skipped_file = _write_skipped(prefix, skipped)
    return BeamScanResult(files=files, rows=counters.get("rows_written", 0),
                          scanned=counters.get("images_read", 0), skipped=skipped, seconds=seconds,
                          skipped_file=skipped_file)


_ROWS = beam.metrics.Metrics.counter(NAMESPACE, "rows_written")


def _counted(row):
    _ROWS.inc()
    return row


def _counters(result) -> Optional[dict]:
    try:
        found = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except Exception:  # noqa: BLE001 - a runner without metrics: the counts are unknown, not wrong
        return None
    totals = {}
    for counter in found:
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + (counter.committed or 0)
    return totals


def _staging_dir(prefix) -> str:
    parent, name = os.path.split(prefix)
    staging = FileSystems.join(parent or ".", f".{name}.beam-{uuid.uuid4().hex[:12]}")
    FileSystems.mkdirs(staging)
    return staging


def _read_bad(path) -> list:
    if not FileSystems.exists(path):
        return []
    with FileSystems.open(path) as f:
        lines = f.read().decode("utf-8").splitlines()
    return sorted(tuple(json.loads(line)) for line in lines if line.strip())


def _publish(staged_prefix, prefix) -> List[str]:
    """Move the staged shards to PREFIX-SSSSS-of-NNNNN.csv; an earlier scan's shards of PREFIX go."""
    staged = sorted(m.path for m in FileSystems.match([staged_prefix + "-*-of-*" + SUFFIX])[0].metadata_list)
    old = [m.path for m in FileSystems.match([prefix + "-*-of-*" + SUFFIX])[0].metadata_list]
    final = [prefix + s[len(staged_prefix):] for s in staged]
    stale = sorted(set(old) - set(final))
    if stale:
        FileSystems.delete(stale)
    FileSystems.rename(staged, final)
    return final


def _write_skipped(prefix, skipped) -> Optional[str]:
    listed = prefix + ".skipped.txt"
    if not skipped:
        if FileSystems.exists(listed):
            FileSystems.delete([listed])  # an earlier scan's list would describe another run
        return None
    with FileSystems.create(listed) as f:
        f.write("".join(f"{item_id}\t{problem}\n" for item_id, problem in skipped).encode("utf-8"))
    return listed


def _remove(path):
    try:
        if FileSystems.exists(path):
            FileSystems.delete([path])
    except Exception:  # noqa: BLE001 - cleaning a staging folder must not hide the real outcome
        log.warning("could not remove the staging folder %s", path)
