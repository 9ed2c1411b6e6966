"""kerasssl.data.load: folders and shards read into an ImageSet: labels, layouts, crop, every bad input."""

import hashlib
import sys
import types

import numpy as np
import pytest

from conftest import write_class_folders, write_hst_folder
from kerasssl.data.load import load_images, read_array, scan
from kerasssl.errors import DataError, KerassslError


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_hst_layout_labels_order_and_raw_pixels(hst_folder):
    before = _digest(hst_folder)
    data = load_images(hst_folder)
    assert data.format == "hst"
    assert data.class_names == ["nonlens", "lens"]
    assert data.images.dtype == np.float32 and data.images.shape == (36, 32, 32, 1)
    assert data.labels.dtype == np.int64
    assert data.class_counts() == {"nonlens": 12, "lens": 24}
    # nl_ prefix -> label 0, natural order inside a class (2 before 10).
    assert all(f.startswith("nl_") for f in data.files[:12])
    assert data.files[12:15] == ["0_hst.npy", "1_hst.npy", "2_hst.npy"]
    assert data.files.index("2_hst.npy") < data.files.index("10_hst.npy")
    # Pixels are raw: identical to the file, NaN kept (4 files x 3 NaN pixels).
    i = data.files.index("nl_5_hst.npy")
    np.testing.assert_array_equal(data.images[i, ..., 0], np.load(hst_folder / "nl_5_hst.npy"))
    assert int(np.isnan(data.images).sum()) == 12
    assert _digest(hst_folder) == before  # never modifies input


def test_class_folders_channels_first_are_transposed(three_band_folder):
    data = load_images(three_band_folder)
    assert data.format == "folders"
    assert data.class_names == ["nonlenses", "lenses"]  # non-lens is label 0
    assert data.images.shape == (36, 32, 32, 3)
    i = data.files.index("lenses/lenses_7.npy")
    assert data.labels[i] == 1
    stored = np.load(three_band_folder / "lenses" / "lenses_7.npy")  # (3, 32, 32)
    np.testing.assert_array_equal(data.images[i], np.moveaxis(stored, 0, -1))


def test_channels_last_and_other_class_names_sorted(tmp_path):
    root = write_class_folders(tmp_path / "sim", {"no_sub": 2, "cdm": 3, "axion": 2},
                               size=16, channels=1, channels_first=False)
    data = load_images(root)
    assert data.class_names == ["axion", "cdm", "no_sub"]
    assert data.class_counts() == {"axion": 2, "cdm": 3, "no_sub": 2}
    i = data.files.index("cdm/cdm_1.npy")
    np.testing.assert_array_equal(data.images[i], np.load(root / "cdm" / "cdm_1.npy"))


def test_center_crop_while_reading_and_refusal_of_small_images(tmp_path):
    root = tmp_path / "mixed"
    (root / "lenses").mkdir(parents=True)
    (root / "nonlenses").mkdir()
    big = np.arange(3 * 11 * 11, dtype=np.float64).reshape(3, 11, 11)
    np.save(root / "lenses" / "a.npy", big)
    np.save(root / "nonlenses" / "b.npy", np.ones((3, 9, 9), np.float32))
    with pytest.raises(DataError, match=r"a\.npy: image is 11x11 but b\.npy is 9x9.*--image-size"):
        load_images(root)
    data = load_images(root, image_size=8)
    assert data.images.shape == (2, 8, 8, 3)
    # Offset (11 - 8) // 2 = 1 for the odd size, (9 - 8) // 2 = 0.
    np.testing.assert_array_equal(data.images[1], np.transpose(big, (1, 2, 0))[1:9, 1:9])
    assert data.meta["stored_dtypes"] == ["float32", "float64"]
    with pytest.raises(DataError, match=r"b\.npy: image is 9x9, smaller than the crop size 10"):
        load_images(root, image_size=10)


def test_band_count_mismatch_names_the_file(tmp_path):
    root = tmp_path / "bands"
    root.mkdir()
    np.save(root / "1.npy", np.ones((8, 8), np.float32))
    np.save(root / "2.npy", np.ones((3, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"2\.npy: has 3 band\(s\) but 1\.npy has 1"):
        load_images(root)


@pytest.mark.parametrize(
    "writer, message",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(b"this is not numpy at all"), "not a valid .npy file"),
        (lambda p: p.write_bytes(_npy_bytes(np.ones((8, 8), np.float32))[:-40]),
         "not a valid .npy file"),
        (lambda p: np.save(p, np.array([np.ones((8, 8)), 0.5], dtype=object), allow_pickle=True),
         "object array.*--allow-pickle"),
        (lambda p: np.save(p, np.ones(64, np.float32)), "1-D array"),
        (lambda p: np.save(p, np.ones((2, 1, 8, 8), np.float32)), "4-D array"),
        (lambda p: np.save(p, np.full((8, 8), np.nan, np.float32)), "all pixels are NaN"),
        (lambda p: np.save(p, np.array(["a", "b"])), "not numbers"),
    ],
    ids=["empty", "garbage", "truncated", "object", "1d", "4d", "all-nan", "strings"],
)
def test_bad_file_is_one_data_error_naming_it(tmp_path, writer, message):
    root = write_hst_folder(tmp_path / "d", 2, 2, size=8)
    writer(root / "nl_7_hst.npy")
    with pytest.raises(DataError, match=message) as info:
        load_images(root)
    assert info.value.path.endswith("nl_7_hst.npy")
    assert "\n" not in str(info.value)


def _npy_bytes(array):
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_object_arrays_with_opt_in_take_element_zero(tmp_path):
    root = tmp_path / "axion"
    for name in ("axion", "cdm"):
        (root / name).mkdir(parents=True)
    image = np.random.default_rng(0).normal(size=(8, 8))
    np.save(root / "axion" / "0.npy", np.array([image, 1e-23], dtype=object), allow_pickle=True)
    np.save(root / "cdm" / "0.npy", image.astype(np.float32))
    data = load_images(root, allow_pickle=True)
    np.testing.assert_allclose(data.images[0, ..., 0], image.astype(np.float32))
    assert data.meta["stored_dtypes"] == ["float32", "float64"]


def test_one_all_nan_band_is_refused(tmp_path):
    root = tmp_path / "b"
    root.mkdir()
    image = np.ones((3, 8, 8), np.float32)
    image[1] = np.nan
    np.save(root / "x.npy", image)
    with pytest.raises(DataError, match=r"band\(s\) \[1\]"):
        load_images(root)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_images(tmp_path / "missing")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        load_images(tmp_path / "nothing")
    root = write_class_folders(tmp_path / "c", {"lenses": 2}, size=8)
    (root / "nonlenses").mkdir()
    with pytest.raises(DataError, match="empty class folder") as info:
        load_images(root)
    assert info.value.path.endswith("nonlenses")
    with pytest.raises(KerassslError, match="positive integer"):
        load_images(root, image_size=0)


def test_read_array_float32_and_fits_in_both_layouts(tmp_path):
    fits = pytest.importorskip("astropy.io.fits")
    root = tmp_path / "fits"
    for name in ("lenses", "nonlenses"):
        (root / name).mkdir(parents=True)
    rng = np.random.default_rng(1)
    cube = rng.normal(size=(3, 12, 12)).astype(">f8")  # big-endian as FITS stores it
    fits.PrimaryHDU(cube).writeto(root / "lenses" / "a.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(cube[0].astype(">f4"))]).writeto(
        root / "nonlenses" / "b.fits")
    a = read_array(root / "lenses" / "a.fits")
    assert a.dtype == np.float32 and a.shape == (3, 12, 12)
    np.testing.assert_allclose(a, cube.astype(np.float32))
    (root / "nonlenses" / "c.fits").write_bytes(b"SIMPLE  = garbage")
    with pytest.raises(DataError, match=r"c\.fits: not a readable FITS file"):
        load_images(root)
    (root / "nonlenses" / "c.fits").unlink()
    with pytest.raises(DataError, match=r"a\.fits: has 3 band\(s\) but b\.fits has 1"):
        load_images(root)
    fits.PrimaryHDU(np.stack([cube[0]] * 3)).writeto(root / "nonlenses" / "b.fits", overwrite=True)
    data = load_images(root)
    assert data.format == "fits"
    np.testing.assert_allclose(data.images[1], np.moveaxis(cube, 0, -1).astype(np.float32))


def test_tfrecord_paths_are_delegated(monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("kerasssl.data.tfrecord.reader")

    def load_tfrecords(pattern, image_size=None, channel_axis="auto"):
        calls.append((pattern, image_size, channel_axis))
        return "delegated"

    fake.load_tfrecords = load_tfrecords
    monkeypatch.setitem(sys.modules, "kerasssl.data.tfrecord.reader", fake)
    assert load_images("data/train-*.tfrecord.gz", image_size=32) == "delegated"
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "train-00000-of-00002.tfrecord").write_bytes(b"")
    (shards / "train-00001-of-00002.tfrecord").write_bytes(b"")
    assert load_images(shards, channel_axis="first") == "delegated"
    assert calls == [("data/train-*.tfrecord.gz", 32, "auto"), (str(shards), None, "first")]


def test_npz_archives_are_named_as_such(tmp_path):
    archive = tmp_path / "images.npz"
    np.savez(archive, a=np.ones((8, 8)))
    message = r"images\.npz: is a \.npz archive; save each image as \.npy$"
    with pytest.raises(DataError, match=message):
        read_array(archive)
    with pytest.raises(DataError, match=message):
        read_array(archive, allow_pickle=True)
    disguised = tmp_path / "x.npy"  # an archive saved under a .npy name
    disguised.write_bytes(archive.read_bytes())
    with pytest.raises(DataError, match=r"x\.npy: is a \.npz archive; save each image as \.npy$"):
        read_array(disguised)
    # In a folder being scanned: named, not skipped as "not an image" (flat and class folders).
    flat = write_hst_folder(tmp_path / "flat", 2, 2, size=8)
    np.savez(flat / "more.npz", a=np.ones((8, 8)))
    with pytest.raises(DataError, match=r"more\.npz: is a \.npz archive; save each image as \.npy$"):
        scan(flat)
    only = tmp_path / "only"
    only.mkdir()
    for name in ("a.npz", "b.npz"):
        np.savez(only / name, a=np.ones((8, 8)))
    with pytest.raises(DataError, match=r"a\.npz: is a \.npz archive; save each image as \.npy "
                                        r"\(and 1 more \.npz in .*only\)$"):
        load_images(only)
    classes = write_class_folders(tmp_path / "c", {"lenses": 2, "nonlenses": 2}, size=8)
    np.savez(classes / "lenses" / "rest.npz", a=np.ones((3, 8, 8)))
    with pytest.raises(DataError, match=r"lenses.rest\.npz: is a \.npz archive"):
        load_images(classes)
