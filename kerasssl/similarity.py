"""Similarity search in a model's embedding space: a faiss index of a survey, and its queries.

:func:`build_index` streams a survey (:mod:`kerasssl.survey`) through a model's
features (:mod:`kerasssl.inference`: a classifier's encoder features, the same
as the SavedModel's ``embed``; or a pretrained ``encoder.keras`` with the run's
``preprocess.json``), L2-normalises them (so inner product = cosine similarity)
and builds a faiss index, chosen by size unless ``kind`` says:

- ``flat`` (``IndexFlatIP``, exact) up to :data:`FLAT_MAX` vectors;
- ``ivf`` (``IndexIVFFlat``, ``nlist ~ 4 sqrt(N)`` lists trained on a seeded
  sample, ``nprobe`` lists searched) above;
- ``hnsw`` (``IndexHNSWFlat``, graph search) on request.

The index folder holds ``index.faiss``, ``ids.txt`` (row i's id, one a line),
``index.json`` (the model's path and fingerprint, n, dim, kind and its
parameters, when) and ``skipped.txt`` if unreadable items were skipped. It is
built in a temporary folder and renamed into place.

:func:`similar` embeds query images through the index's model (the recorded
one, or ``model`` after checking it has the same fingerprint) and returns each
query's nearest neighbours, and those of the queries' mean with ``mean=True``.

Example:
    >>> build_index("run/classifier.keras", ["survey/"], "idx")
    >>> rows = similar("idx", ["lens1.npy", "lens2.npy"], k=100, mean=True)
    >>> rows[0]
    ('lens1.npy', 1, 'pool/pool_1234.npy', 0.9731)
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from kerasssl.errors import DataError, KerassslError
from kerasssl.inference import load_survey_model, model_fingerprint
from kerasssl.rundir import replacing
from kerasssl.survey import ImageReader, list_survey, stream

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
KINDS = ("auto", "flat", "ivf", "hnsw")
#: Above this many vectors ``auto`` builds an IVF index instead of the exact flat one.
FLAT_MAX = 1_000_000
INDEX_FILE, IDS_FILE, RECORD_FILE, SKIPPED_FILE = "index.faiss", "ids.txt", "index.json", "skipped.txt"
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 128
_ADD_BLOCK = 65536


def import_faiss():
    """faiss, or a one-line error saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise KerassslError("similarity search needs faiss: pip install 'kerasssl[survey]' (faiss-cpu)") from None
    return faiss


def l2_normalize(x) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def choose_kind(n: int, kind: str = "auto") -> str:
    """The index kind for ``n`` vectors: ``kind`` unless "auto" (flat up to FLAT_MAX, else ivf)."""
    if kind not in KINDS:
        raise KerassslError(f"unknown index kind {kind!r}; choose from {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    return "flat" if n <= FLAT_MAX else "ivf"


def ivf_lists(n: int) -> int:
    """``nlist`` ~ 4 sqrt(n), with at least 39 training vectors per list (faiss's minimum)."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


@dataclass
class IndexInfo:
    """An index folder's record (``index.json``) and where it is."""

    path: Path
    record: dict

    @property
    def n(self) -> int:
        return int(self.record["n"])


# -- building ------------------------------------------------------------------------


def build_index(model, survey, out, *, kind: str = "auto", batch_size: int = 64, skip_bad: bool = False,
                channel_axis: str = "auto", allow_pickle: bool = False, seed: int = 0,
                progress: Optional[bool] = None) -> IndexInfo:
    """Embed every image of ``survey`` and save a faiss index of the L2-normalised features to ``out``.

    Args:
        model: a ``.keras`` classifier or encoder, or a SavedModel (with ``embed``).
        survey: SURVEY arguments (see :mod:`kerasssl.survey`).
        out: the index folder (an earlier index there is replaced; any other
            non-empty folder is refused).
        kind: "auto", "flat", "ivf" or "hnsw".
        batch_size: images per model call.
        skip_bad: skip unreadable items (listed in ``skipped.txt``) instead of stopping.
        channel_axis / allow_pickle: how files are read.
        seed: the IVF training sample.
        progress: a progress bar on stderr (None: when stderr is a terminal).

    Returns:
        :class:`IndexInfo`.
    """
    faiss = import_faiss()
    out = Path(out)
    choose_kind(0, kind)
    _check_out(out)
    listing = list_survey(survey if isinstance(survey, (list, tuple)) else [survey])
    loaded = model if hasattr(model, "run") else load_survey_model(model)
    loaded.require(features=True, why=" to index with")
    reader = ImageReader(tuple(loaded.image_shape), channel_axis, bool(allow_pickle))

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        ids, skipped, dim, seconds = _embed_into(tmp / "vectors.f32", listing, reader, loaded, batch_size,
                                                 skip_bad, progress)
        if not ids:
            why = "every item of the survey was skipped" if skipped else "the survey holds no images"
            raise DataError(out, f"nothing to index: {why}")
        vectors = np.memmap(tmp / "vectors.f32", dtype=np.float32, mode="r", shape=(len(ids), dim))
        chosen = choose_kind(len(ids), kind)
        index, params = _make_index(faiss, chosen, vectors, seed)
        faiss.write_index(index, str(tmp / INDEX_FILE))
        del vectors
        (tmp / "vectors.f32").unlink()
        (tmp / IDS_FILE).write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
        if skipped:
            (tmp / SKIPPED_FILE).write_text("".join(f"{i}\t{p}\n" for i, p in skipped), encoding="utf-8")
        record = {
            "format": INDEX_FORMAT,
            "model": str(Path(loaded.path).resolve()),
            "model_kind": loaded.kind,
            "model_fingerprint": loaded.fingerprint(),
            "image_shape": list(loaded.image_shape),
            "features": "the encoder's own features (the SavedModel's embed), L2-normalised",
            "metric": "inner product = cosine similarity",
            "n": len(ids),
            "dim": int(dim),
            "kind": chosen,
            "params": params,
            "skipped": len(skipped),
            "survey": listing.arguments,
            "reading": {"channel_axis": channel_axis, "allow_pickle": bool(allow_pickle)},
            "seconds": round(seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2))
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return IndexInfo(out, record)


def _check_out(out: Path):
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / RECORD_FILE).is_file())):
        raise DataError(out, "exists and is not a kerasssl index; choose another --out")


def _move_into_place(tmp: Path, out: Path):
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _embed_into(path, listing, reader, model, batch_size, skip_bad, progress):
    """Stream the survey's features, normalised, into a raw float32 file; (ids, skipped, dim, seconds)."""
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else bool(progress)
    ids, skipped, dim = [], [], None
    started = time.perf_counter()
    with open(path, "wb") as f, tqdm(total=listing.total, unit="img", disable=not show, file=sys.stderr,
                                     mininterval=0.5, dynamic_ncols=True) as bar:
        for batch in stream(listing, reader, batch_size):
            if batch.bad and not skip_bad:
                _, where, problem = batch.bad[0]
                raise DataError(where, f"{problem} (--skip-bad skips unreadable files)")
            skipped.extend((item_id, f"{where}: {problem}") for item_id, where, problem in batch.bad)
            if batch.ids:
                _, features = model.run(batch.images, probabilities=False, features=True)
                features = l2_normalize(features.reshape(len(features), -1))
                dim = features.shape[1]
                f.write(features.tobytes())
                ids.extend(batch.ids)
            bar.update(len(batch.ids) + len(batch.bad))
    return ids, skipped, dim or 0, time.perf_counter() - started


def _make_index(faiss, kind, vectors, seed):
    n, dim = vectors.shape
    if kind == "flat":
        index, params = faiss.IndexFlatIP(dim), {}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
    else:
        nlist = ivf_lists(n)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, 256 * nlist), replace=False))
        index.train(np.ascontiguousarray(vectors[sample]))
        params = {"nlist": nlist, "nprobe": min(nlist, 64), "train_sample": int(len(sample)), "seed": seed}
    for start in range(0, n, _ADD_BLOCK):
        index.add(np.ascontiguousarray(vectors[start:start + _ADD_BLOCK]))
    return index, params


# -- loading and querying --------------------------------------------------------------


def load_index(path):
    """``(IndexInfo, faiss index, ids)`` of an index folder; one-line errors for anything missing."""
    faiss = import_faiss()
    path = Path(path)
    if not (path / RECORD_FILE).is_file():
        raise DataError(path, f"not a kerasssl index (no {RECORD_FILE}); make one with `kerasssl index`")
    try:
        record = json.loads((path / RECORD_FILE).read_text())
    except (OSError, ValueError):
        raise DataError(path / RECORD_FILE, "not valid JSON") from None
    if not isinstance(record, dict) or record.get("format") != INDEX_FORMAT:
        raise DataError(path / RECORD_FILE, f"not an index record of format {INDEX_FORMAT}")
    try:
        index = faiss.read_index(str(path / INDEX_FILE))
        ids = (path / IDS_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, RuntimeError) as e:
        raise DataError(path, f"cannot read the index ({type(e).__name__})") from None
    if len(ids) != index.ntotal or len(ids) != record.get("n"):
        raise DataError(path, f"damaged index: {len(ids)} ids for {index.ntotal} vectors")
    params = record.get("params") or {}
    if "nprobe" in params:
        index.nprobe = int(params["nprobe"])
    if "efSearch" in params:
        index.hnsw.efSearch = int(params["efSearch"])
    return IndexInfo(path, record), index, ids


def index_model(info: IndexInfo, model=None):
    """The model to embed queries with: ``model`` or the recorded one, same fingerprint as the index's."""
    recorded = info.record["model"]
    candidate = Path(model) if model is not None else Path(recorded)
    if model is None and not candidate.exists():
        raise DataError(candidate, f"the model that built {info.path} is not there any more; "
                                   "pass it with --model")
    fingerprint = model_fingerprint(candidate)
    if fingerprint != info.record["model_fingerprint"]:
        whose = "is not the model that" if model is not None else "has changed since it"
        raise DataError(candidate, f"{whose} built the index {info.path} (fingerprint {fingerprint[:12]}, "
                                   f"the index's is {info.record['model_fingerprint'][:12]})")
    return candidate


def similar(index_path, queries, *, k: int = 100, mean: bool = False, model=None, batch_size: int = 64,
            nprobe: Optional[int] = None) -> List[tuple]:
    """Nearest neighbours of each query image (and of their mean) in an index.

    Args:
        index_path: a folder made by :func:`build_index`.
        queries: query images (any SURVEY form; each item is one query, named by its id).
        k: neighbours per query (at most the index size).
        mean: also search with the mean of the queries' normalised features (query "mean").
        model: the model to embed queries with; must have the index's fingerprint
            (default: the model recorded in the index).
        batch_size: images per model call.
        nprobe: IVF lists to search (default: the recorded one).

    Returns:
        ``(query, rank, id, similarity)`` tuples, rank 1 = the most similar;
        similarity is the cosine of the features (a query that is itself in
        the index finds itself first, with similarity 1).
    """
    if k < 1:
        raise KerassslError(f"--k must be >= 1, got {k}")
    info, index, ids = load_index(index_path)
    model_path = index_model(info, model)
    listing = list_survey(queries if isinstance(queries, (list, tuple)) else [queries])
    loaded = load_survey_model(model_path)
    reading = info.record.get("reading", {})
    reader = ImageReader(tuple(loaded.image_shape), reading.get("channel_axis", "auto"),
                         bool(reading.get("allow_pickle", False)))
    names, vectors = [], []
    for batch in stream(listing, reader, batch_size):
        if batch.bad:
            _, where, problem = batch.bad[0]
            raise DataError(where, problem)
        _, features = loaded.run(batch.images, probabilities=False, features=True)
        names.extend(batch.ids)
        vectors.append(l2_normalize(features.reshape(len(features), -1)))
    vectors = np.concatenate(vectors)
    if vectors.shape[1] != info.record["dim"]:
        raise DataError(model_path, f"gives {vectors.shape[1]} features; the index holds {info.record['dim']}")
    if mean:
        names.append("mean")
        vectors = np.concatenate([vectors, l2_normalize(vectors.mean(axis=0, keepdims=True))])
    if nprobe is not None and hasattr(index, "nprobe"):
        index.nprobe = int(nprobe)
    similarity, found = index.search(np.ascontiguousarray(vectors), min(k, index.ntotal))
    rows = []
    for name, sims, rows_found in zip(names, similarity, found):
        kept = [(s, r) for s, r in zip(sims, rows_found) if r >= 0]  # faiss pads with -1
        rows.extend((name, rank, ids[r], float(s)) for rank, (s, r) in enumerate(kept, start=1))
    return rows


def write_neighbours(rows, out):
    """``query,rank,id,similarity`` CSV, written atomically."""
    import csv

    out = Path(out)
    if out.is_dir():
        raise DataError(out, "is a folder; --out names the CSV file")
    with replacing(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "rank", "id", "similarity"])
        for query, rank, item_id, sim in rows:
            writer.writerow([query, rank, item_id, f"{sim:.6f}"])
    return out
