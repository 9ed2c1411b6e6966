"""kerasssl.data.arrays: one file -> one array (headers checked first), and the (H, W, C) rule."""

import numpy as np
import pytest

from conftest import write_hst_folder
from kerasssl.data.arrays import read_array, to_hwc
from kerasssl.data.load import load_images
from kerasssl.errors import DataError


def test_to_hwc_rules():
    assert to_hwc(np.zeros((5, 6), np.float32), "a").shape == (5, 6, 1)
    chw = np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
    np.testing.assert_array_equal(to_hwc(chw, "a"), np.transpose(chw, (1, 2, 0)))
    assert to_hwc(np.zeros((8, 8, 3), np.float32), "a").shape == (8, 8, 3)
    assert to_hwc(np.zeros((10, 64, 64), np.float32), "a").shape == (64, 64, 10)  # >4-band cube
    for shape in [(16,), (1, 3, 8, 8)]:
        with pytest.raises(DataError, match=r"a\.npy: is a \d-D array"):
            to_hwc(np.zeros(shape, np.float32), "a.npy")


def _lying_header(path, shape=(100000, 100000)):
    """A .npy file whose header claims `shape` float32 and that holds nothing else (128 bytes)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return path


def test_a_header_claiming_more_than_the_file_holds_is_refused_before_any_allocation(
        tmp_path, monkeypatch):
    root = write_hst_folder(tmp_path / "d", 2, 2, size=8)
    bad = _lying_header(root / "nl_7_hst.npy")
    assert bad.stat().st_size == 128
    loads = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    expected = (r"nl_7_hst\.npy: not a valid \.npy file: its header claims a 100000x100000 float32 "
                r"array \(37\.3 GiB\) but the file holds 0 bytes after the header")
    with pytest.raises(DataError, match=expected):
        read_array(bad)
    assert loads == []  # refused from the header alone: np.load (which allocates) never ran
    with pytest.raises(DataError, match=expected):
        load_images(root)  # the header pass refuses it before any pixel of the folder is read
    assert loads == []
    # A file cut short by a few bytes is named the same way, with the sizes.
    np.save(root / "nl_7_hst.npy", np.ones((8, 8), np.float32))
    (root / "nl_7_hst.npy").write_bytes((root / "nl_7_hst.npy").read_bytes()[:-1])
    with pytest.raises(DataError, match=r"claims a 8x8 float32 array \(256 bytes\) but the file "
                                        r"holds 255 bytes after the header"):
        load_images(root)


def test_stored_shape_reads_headers_only(tmp_path, monkeypatch):
    from kerasssl.data.arrays import stored_shape

    np.save(tmp_path / "a.npy", np.ones((3, 9, 7), np.float64))
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load called"))
    assert stored_shape(tmp_path / "a.npy") == (3, 9, 7)


def test_a_plain_pickle_is_named_with_allow_pickle(tmp_path):
    import pickle

    path = tmp_path / "x.npy"
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DataError, match=r"x\.npy: holds a pickled list, not a NumPy array"):
        read_array(path, allow_pickle=True)
    with pytest.raises(DataError, match="no NumPy header"):
        read_array(path)
