"""One image file -> one array: the .npy / FITS readers, their checks, the band-axis rule.

Everything here looks at one file (or at the stored shapes of many, for
:func:`channel_layout`); :mod:`kerasssl.data.load` walks data folders with it
and :mod:`kerasssl.data.tfrecord` applies the same rules to records. Files
are only ever read.

- ``.npy`` headers are checked against the file size before anything is
  allocated (a header may claim 37 GiB in a 128-byte file); a zip archive
  (``.npz``) is named as such.
- The band axis of a data set is decided once from the stored shapes of all
  its files (:func:`channel_layout`), or set with ``channel_axis``.

Example:
    >>> shapes = [stored_shape(p) for p in paths]          # headers only
    >>> layout = channel_layout(shapes, source="data/3b")  # 'first' for (3, H, W) files
    >>> image = to_hwc(read_array(paths[0]), paths[0], layout.axis)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from kerasssl.config import CHANNEL_AXES
from kerasssl.errors import DataError, KerassslError

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
NPZ_PROBLEM = "is a .npz archive; save each image as .npy"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members, an empty zip
_AXIS_HINT = "pass --channels-first or --channels-last (data.channel_axis)"


def is_fits(path) -> bool:
    """True for a FITS file name (``.fits``, ``.fit``, ``.fts``, gzipped or not)."""
    return str(path).lower().endswith(FITS_SUFFIXES)


def read_array(path, allow_pickle: bool = False) -> np.ndarray:
    """The array stored in one ``.npy`` or FITS file, as float32 (shape as stored).

    Args:
        path: a ``.npy`` or ``.fits`` file.
        allow_pickle: read ``.npy`` object arrays (e.g. DeepLense axion files
            ``[image, mass]``) and take element 0. Unpickling runs code from the
            file: only for files you trust.

    Raises:
        DataError: empty or corrupt file, object array without ``allow_pickle``,
            non-numeric data.

    Example:
        >>> read_array("hst/nl_3_hst.npy").shape
        (334, 334)
    """
    path = Path(path)
    return as_float32(read_stored(path, allow_pickle), path)


def _file_size(path: Path) -> int:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(path, f"cannot read file ({e.strerror or e})") from None
    if size == 0:
        raise DataError(path, "empty file (0 bytes)")
    return size


def read_stored(path: Path, allow_pickle: bool):
    """The array of one file in its stored dtype (object arrays: element 0).

    :func:`read_array` is this as float32; ``load_images`` reads with this to
    record the stored dtypes.
    """
    size = _file_size(path)
    if is_fits(path):
        return _read_fits(path)
    return _read_npy(path, allow_pickle, size)


_OBJECT_ARRAY_PROBLEM = (
    "holds an object array (pickled Python objects); pass --allow-pickle "
    "(allow_pickle=True) to read element 0, only if you trust the file"
)


def _npy_header(path: Path, f, size: int):
    """(shape, dtype) from the header of the open ``.npy`` file ``f``; None without one.

    Reads the header only and compares the array it claims with the bytes
    that follow, so a header claiming more than the file holds is refused
    before anything is allocated (np.load would try to allocate it first).
    """
    magic = f.read(6)
    if magic[:4] in _ZIP_MAGICS:
        raise DataError(path, NPZ_PROBLEM)  # np.load would open it as an NpzFile
    if magic != b"\x93NUMPY":
        return None
    f.seek(0)
    try:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)  # 3.0 differs in encoding only
        shape, _, dtype = read_header(f)
    except (ValueError, SyntaxError, OSError, EOFError) as e:
        raise DataError(path, f"not a valid .npy file (bad header: {e})") from None
    if dtype.hasobject:
        return tuple(shape), dtype  # a pickle follows: its size says nothing
    claimed = math.prod(shape) * dtype.itemsize
    held = size - f.tell()
    if claimed > held:
        raise DataError(
            path,
            f"not a valid .npy file: its header claims a {shape_text(shape)} {dtype} array "
            f"({_byte_text(claimed)}) but the file holds {_byte_text(held)} after the header "
            "(truncated or corrupt)",
        )
    return tuple(shape), dtype


def shape_text(shape) -> str:
    """A shape as messages write it: ``3x64x64`` (``0-D`` for a scalar)."""
    return "x".join(str(int(d)) for d in shape) if len(shape) else "0-D"


def _byte_text(n: int) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _read_npy(path: Path, allow_pickle: bool, size: Optional[int] = None):
    size = _file_size(path) if size is None else size
    try:
        with open(path, "rb") as f:
            header = _npy_header(path, f, size)
            if header is None and not allow_pickle:
                # np.load would call this "pickled data"; it is simply not a .npy file.
                raise DataError(path, "not a valid .npy file (no NumPy header)")
            if header is not None and header[1].hasobject and not allow_pickle:
                raise DataError(path, _OBJECT_ARRAY_PROBLEM)
            f.seek(0)
            array = np.load(f, allow_pickle=allow_pickle)
    except DataError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e) or "pickled" in str(e):
            raise DataError(path, _OBJECT_ARRAY_PROBLEM) from None
        raise DataError(path, f"not a valid .npy file (truncated or corrupt: {e})") from None
    except (OSError, EOFError) as e:
        raise DataError(path, f"not a valid .npy file ({e})") from None
    except Exception as e:  # noqa: BLE001 - unpickling garbage can raise anything
        raise DataError(path, f"not a valid .npy file ({type(e).__name__}: {e})") from None
    if not isinstance(array, np.ndarray):  # a plain pickle (allow_pickle) may hold anything
        raise DataError(path, f"holds a pickled {type(array).__name__}, not a NumPy array")
    if array.dtype == object:
        # Reached only with allow_pickle: DeepLense axion files are [image, mass].
        if array.size == 0:
            raise DataError(path, "empty object array")
        element = array.item() if array.ndim == 0 else array.flat[0]
        try:
            array = np.asarray(element)
            array.astype(np.float32)  # fails for non-numeric elements
        except (TypeError, ValueError):
            raise DataError(
                path, f"element 0 of the object array is not a numeric array "
                f"({type(element).__name__})"
            ) from None
    return array


def _read_fits(path: Path):
    return _first_image_hdu(path, lambda hdu: None if hdu.data is None else np.array(hdu.data))


def _astropy_fits():
    try:
        from astropy.io import fits
    except ImportError:
        raise KerassslError(
            "reading FITS needs astropy: pip install 'kerasssl[fits]'"
        ) from None
    return fits


def _fits_shape(path: Path):
    """The shape of the image :func:`_read_fits` returns, from the FITS headers only."""
    return _first_image_hdu(path, lambda hdu: tuple(int(d) for d in hdu.shape)
                            if hdu.header.get("NAXIS", 0) > 0 else None)


def _first_image_hdu(path: Path, take):
    """``take(hdu)`` of the first image HDU for which it is not None: the one rule of
    which HDU is the image, for the pixels and for the header-only shape alike."""
    fits = _astropy_fits()
    try:
        with fits.open(path, memmap=False) as hdul:
            for hdu in hdul:
                if getattr(hdu, "is_image", True):
                    found = take(hdu)
                    if found is not None:
                        return found
    except Exception as e:  # noqa: BLE001 - astropy raises many types for bad files
        raise DataError(path, f"not a readable FITS file ({type(e).__name__}: {e})") from None
    raise DataError(path, "FITS file has no image data in any HDU")


def stored_shape(path, allow_pickle: bool = False) -> Tuple[int, ...]:
    """The shape of the array in one ``.npy`` or FITS file, from its header.

    No pixels are read, except for object arrays (``allow_pickle``), whose
    element 0 must be unpickled to know its shape. The checks that need only
    the header (size, dtype, rank) are made here, so a bad file is refused
    before any pixel of the data set is read.

    Raises:
        DataError: what :func:`read_array` would refuse, as far as the header tells.

    Example:
        >>> stored_shape("3b/lenses/lenses_0.npy")
        (3, 64, 64)
    """
    path = Path(path)
    size = _file_size(path)
    if is_fits(path):
        shape = _fits_shape(path)
    else:
        with open(path, "rb") as f:
            header = _npy_header(path, f, size)
        if header is None or header[1].hasobject:
            array = _read_npy(path, allow_pickle, size)  # refused here without allow_pickle
            header = (tuple(array.shape), array.dtype)
        shape, dtype = header
        check_numeric(dtype, shape, path)
    if math.prod(shape) == 0:
        raise DataError(path, f"empty array of shape {tuple(shape)}")
    _check_rank(shape, path)
    return tuple(int(d) for d in shape)


def check_numeric(dtype, shape, path) -> None:
    if not (np.issubdtype(dtype, np.number) or dtype == bool):
        raise DataError(path, f"holds {dtype} data, not numbers")
    if np.issubdtype(dtype, np.complexfloating):
        raise DataError(path, "holds complex numbers, not pixel values")
    if math.prod(shape) == 0:
        raise DataError(path, f"empty array of shape {tuple(shape)}")


def _check_rank(shape, path) -> None:
    if len(shape) not in (2, 3):
        raise DataError(
            path,
            f"is a {len(shape)}-D array of shape {tuple(shape)}; expected an image "
            "(H, W), (H, W, C) or (C, H, W)",
        )


def as_float32(array, path: Path) -> np.ndarray:
    """A stored array as native float32; non-numeric data is a DataError naming ``path``."""
    array = np.asarray(array)
    check_numeric(array.dtype, array.shape, path)
    # astype also converts big-endian FITS data to native order.
    return array.astype(np.float32, copy=False)


# -- which axis holds the bands -------------------------------------------------


@dataclass(frozen=True)
class ChannelLayout:
    """Which axis of the stored 3-D arrays holds the bands, and why.

    Args:
        axis: "first" (C, H, W), "last" (H, W, C), or None when every image
            is 2-D (one band, nothing to decide).
        reason: one sentence for ``kerasssl inspect``.
        setting: the ``channel_axis`` asked for ("auto", "first", "last").
    """

    axis: Optional[str]
    reason: str
    setting: str = "auto"

    def to_dict(self) -> dict:
        return {"axis": self.axis, "reason": self.reason, "setting": self.setting}


def channel_layout(shapes, channel_axis: str = "auto", *, source="data",
                   files: Optional[Sequence[str]] = None) -> ChannelLayout:
    """Decide the band axis of a data set from the stored shapes of all its files.

    With ``channel_axis="auto"`` the bands are on the first axis if that axis
    has the same size in every 3-D file and is smaller than the other two
    axes in every file; on the last axis under the same condition; otherwise
    the layout is ambiguous (e.g. every file 3x3x3, or files that disagree)
    and a one-line DataError asks for ``--channels-first/--channels-last``.
    2-D files have one band and do not vote. One shape is a data set of one
    file, so single files (predict, TFRecord records) follow the same rule,
    and whenever a data set's layout is decided every file on its own gives
    the same answer.

    Args:
        shapes: the stored shape of each file (2-D or 3-D).
        channel_axis: "auto", or "first" / "last" to skip the decision.
        source: what to name in an error (the data folder, or the file).
        files: optional name of each file, for examples in the error.

    Returns:
        :class:`ChannelLayout`.

    Raises:
        KerassslError: ``channel_axis`` is not one of :data:`CHANNEL_AXES`.
        DataError: ``auto`` and no axis qualifies.

    Example:
        >>> channel_layout([(5, 16, 20), (5, 18, 22)]).axis
        'first'
        >>> channel_layout([(64, 64, 3)]).reason
        'the last axis has size 3 in the file and is smaller than the other two'
    """
    check_channel_axis(channel_axis)
    shapes = [tuple(int(d) for d in s) for s in shapes]
    names = list(files) if files is not None else [None] * len(shapes)
    cubes = [(s, n) for s, n in zip(shapes, names) if len(s) == 3]
    if channel_axis != "auto":
        return ChannelLayout(channel_axis, f"set to {channel_axis} (data.channel_axis, "
                                           f"--channels-{channel_axis})", channel_axis)
    if not cubes:
        return ChannelLayout(None, "every image is 2-D (H, W): one band", "auto")
    chosen = [axis for axis, at in (("first", 0), ("last", 2)) if _bands_at(cubes, at)]
    if len(chosen) == 1:  # at most one can qualify: each must be smaller than the other
        at = 0 if chosen[0] == "first" else 2
        where = ("the file" if len(shapes) == 1 else f"all {len(cubes)} files")
        if len(cubes) < len(shapes):
            where = f"all {len(cubes)} 3-D files (of {len(shapes)})"
        return ChannelLayout(chosen[0], f"the {chosen[0]} axis has size {cubes[0][0][at]} in "
                                        f"{where} and is smaller than the other two", "auto")
    distinct = {}
    for shape, name in cubes:
        distinct.setdefault(shape, name)
    if len(distinct) == 1:
        shape = next(iter(distinct))
        what = "this" if len(cubes) == 1 else f"these {len(cubes)}"
        raise DataError(source, f"cannot tell which axis of {what} {shape_text(shape)} "
                                f"array{'s' if len(cubes) > 1 else ''} holds the bands (neither "
                                f"the first nor the last axis is the smallest); {_AXIS_HINT}")
    examples = ", ".join(f"{name} {shape_text(shape)}" if name else shape_text(shape)
                         for shape, name in list(distinct.items())[:3])
    raise DataError(source, f"no axis is small and the same size in every file (e.g. {examples}), "
                            f"so the band axis is unclear; {_AXIS_HINT}")


def check_channel_axis(channel_axis) -> None:
    """Refuse a ``channel_axis`` that is not one of :data:`CHANNEL_AXES` (KerassslError)."""
    if channel_axis not in CHANNEL_AXES:
        raise KerassslError(
            f"channel axis must be one of {', '.join(CHANNEL_AXES)}, got {channel_axis!r}")


def _bands_at(cubes, at) -> bool:
    """True if axis ``at`` has one size in every shape and is smaller than the two others."""
    if len({shape[at] for shape, _ in cubes}) != 1:
        return False
    return all(shape[at] < shape[other] for shape, _ in cubes for other in range(3) if other != at)


def hwc_shape(shape, axis: Optional[str], path="data") -> Tuple[int, int, int]:
    """The (H, W, C) that :func:`to_hwc` makes of a stored ``shape`` with band axis ``axis``.

    Example:
        >>> hwc_shape((3, 64, 60), "first"), hwc_shape((64, 60), None)
        ((64, 60, 3), (64, 60, 1))
    """
    shape = tuple(int(d) for d in shape)
    _check_rank(shape, path)
    if len(shape) == 2:
        return shape + (1,)
    return shape[1:] + shape[:1] if axis == "first" else shape


def to_hwc(array: np.ndarray, path, channel_axis: str = "auto") -> np.ndarray:
    """Put one image in (H, W, C) layout.

    2-D (H, W) gets C=1. A 3-D array is transposed from (C, H, W) when its
    bands are on the first axis: ``channel_axis="first"``, or ``"auto"`` and
    :func:`channel_layout` of this one shape says so (the first axis is the
    smallest); it is kept as (H, W, C) for ``"last"`` or when the last axis
    is the smallest. A data set decides once for all its files
    (:func:`load_images`) and passes the answer here. 0-D, 1-D and 4-D+ arrays
    are refused.

    Args:
        array: one image as stored.
        path: its file, named in the error.
        channel_axis: "auto", "first" or "last".

    Raises:
        DataError: not a 2-D or 3-D array, or "auto" and no axis is the smallest
            (e.g. 3x3x3).

    Example:
        >>> to_hwc(np.zeros((3, 64, 64), np.float32), "a.npy").shape
        (64, 64, 3)
        >>> to_hwc(np.zeros((5, 16, 20), np.float32), "a.npy").shape
        (16, 20, 5)
    """
    if array.ndim == 2:
        return array[..., None]
    _check_rank(array.shape, path)
    axis = channel_layout([array.shape], channel_axis, source=path).axis
    return np.transpose(array, (1, 2, 0)) if axis == "first" else array


def check_finite_bands(image: np.ndarray, path) -> None:
    """Refuse an (H, W, C) image with a band that has no finite pixel.

    NaN repair fills a pixel from its band's finite pixels, so a band (or a
    whole image) with none cannot be repaired; every reader (folders, FITS,
    TFRecord shards) applies this same check.

    Args:
        image: (H, W, C) array.
        path: what to name in the error (a file, or ``shard: record``).

    Raises:
        DataError: one line naming ``path`` and the empty band(s).

    Example:
        >>> check_finite_bands(np.full((4, 4, 1), np.nan), "a.npy")
        Traceback (most recent call last):
        kerasssl.errors.DataError: a.npy: all pixels are NaN/Inf: nothing to repair from
    """
    finite_per_band = np.isfinite(image).reshape(-1, image.shape[-1]).any(axis=0)
    if not finite_per_band.any():
        raise DataError(path, "all pixels are NaN/Inf: nothing to repair from")
    if not finite_per_band.all():
        bands = [int(b) for b in np.flatnonzero(~finite_per_band)]
        raise DataError(path, f"band(s) {bands} have only NaN/Inf pixels: nothing to repair from")
