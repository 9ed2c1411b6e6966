"""Which axis holds the bands: decided once from all files, or set; folders, shards, predict, CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest

from kerasssl.data import tfrecord
from kerasssl.data.load import channel_layout, load_images, to_hwc
from kerasssl.errors import DataError, KerassslError

HINT = r"pass --channels-first or --channels-last \(data\.channel_axis\)"


def write_set(root, shapes, seed=0):
    """Flat folder: one file per shape, alternately lens / non-lens (nl_*)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i, shape in enumerate(shapes):
        name = f"nl_{i}.npy" if i % 2 else f"{i}.npy"
        np.save(root / name, rng.normal(size=shape).astype(np.float32))
    return root


def test_five_band_channels_first_set_is_not_read_as_five_rows(tmp_path):
    # The case: (5, 16, 20) was read as H=5, W=16, C=20.
    root = write_set(tmp_path / "d", [(5, 16, 20)] * 4)
    data = load_images(root)
    assert data.images.shape == (4, 16, 20, 5)
    i = data.files.index("0.npy")
    np.testing.assert_array_equal(data.images[i], np.moveaxis(np.load(root / "0.npy"), 0, -1))
    assert data.meta["channel_layout"] == {
        "axis": "first", "setting": "auto",
        "reason": "the first axis has size 5 in all 4 files and is smaller than the other two"}


def test_the_band_axis_is_the_one_with_one_small_size_in_every_file(tmp_path):
    first = write_set(tmp_path / "first", [(5, 16, 20), (5, 18, 17), (5, 21, 16)])
    assert load_images(first, image_size=16).images.shape == (3, 16, 16, 5)
    last = write_set(tmp_path / "last", [(16, 20, 3), (18, 17, 3), (40, 16, 3)])
    data = load_images(last, image_size=16)
    assert data.images.shape == (3, 16, 16, 3) and data.meta["channel_layout"]["axis"] == "last"
    # 2-D files have one band and do not vote.
    assert channel_layout([(8, 8), (1, 8, 8)]).axis == "first"
    assert channel_layout([(8, 8), (9, 9)]).axis is None


@pytest.mark.parametrize("shapes, message", [
    ([(3, 3, 3)] * 2, r"cannot tell which axis of these 2 3x3x3 arrays holds the bands"),
    ([(3, 8, 8), (8, 8, 3)], r"no axis is small and the same size in every file \(e\.g\. nl_1\.npy "
                             r"8x8x3, 0\.npy 3x8x8\)"),
    ([(3, 8, 8), (4, 8, 8)], r"no axis is small and the same size in every file"),
])
def test_an_unclear_band_axis_is_one_line_asking_for_the_flag(tmp_path, shapes, message):
    root = write_set(tmp_path / "d", shapes)
    with pytest.raises(DataError, match=rf"^{tmp_path / 'd'}: {message}.*; {HINT}$") as info:
        load_images(root)
    assert "\n" not in str(info.value)


def test_an_explicit_axis_overrides_the_decision(tmp_path):
    root = write_set(tmp_path / "d", [(3, 3, 3)] * 2)
    stored = np.load(root / "0.npy")
    first = load_images(root, channel_axis="first")
    np.testing.assert_array_equal(first.images[1], np.moveaxis(stored, 0, -1))
    last = load_images(root, channel_axis="last")
    np.testing.assert_array_equal(last.images[1], stored)
    assert last.meta["channel_layout"]["setting"] == "last"
    with pytest.raises(KerassslError, match="channel axis must be one of auto, first, last"):
        load_images(root, channel_axis="bands")


def test_one_file_follows_the_same_rule():
    chw = np.arange(5 * 16 * 20, dtype=np.float32).reshape(5, 16, 20)
    np.testing.assert_array_equal(to_hwc(chw, "a.npy"), np.moveaxis(chw, 0, -1))
    assert to_hwc(np.zeros((16, 20, 5), np.float32), "a.npy").shape == (16, 20, 5)
    cube = np.zeros((3, 3, 3), np.float32)
    with pytest.raises(DataError, match=rf"^a\.npy: cannot tell which axis of this 3x3x3 array.*{HINT}$"):
        to_hwc(cube, "a.npy")
    assert to_hwc(cube, "a.npy", "first").shape == (3, 3, 3)


def test_config_key_is_checked():
    from kerasssl.config import RunConfig

    assert RunConfig().data.channel_axis == "auto"
    assert RunConfig.from_dict({"data": {"channel_axis": "first"}}).data.channel_axis == "first"
    with pytest.raises(KerassslError, match="data.channel_axis must be one of auto, first, last"):
        RunConfig.from_dict({"data": {"channel_axis": "middle"}})


# -- TFRecord shards: the same decision as the folder ------------------------------


def test_shards_of_a_five_band_set_read_like_the_folder(tmp_path):
    root = write_set(tmp_path / "d", [(5, 16, 20)] * 4)
    manifest = tfrecord.write_tfrecords(root, tmp_path / "rec", shards=2, progress=False)
    assert manifest["channel_axis"] == "first"
    folder, shards = load_images(root), load_images(str(tmp_path / "rec" / "*.tfrecord*"))
    order = [shards.files.index(f) for f in folder.files]
    np.testing.assert_array_equal(shards.images[order], folder.images)
    # The serving parser, one record at a time, agrees.
    record = tfrecord.encode_example(np.load(root / "0.npy"), 1, "lens", "0.npy")
    served = tfrecord.parse_examples_to_images(np.array([record]), (16, 20, 5)).numpy()
    np.testing.assert_array_equal(served[0], folder.images[folder.files.index("0.npy")])


def test_an_axis_given_to_convert_is_recorded_and_used_by_readers(tmp_path):
    root = write_set(tmp_path / "d", [(3, 3, 3)] * 4)
    with pytest.raises(DataError, match=HINT):
        tfrecord.write_tfrecords(root, tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists()
    manifest = tfrecord.write_tfrecords(root, tmp_path / "rec", progress=False, channel_axis="last")
    assert manifest["channel_axis"] == "last"
    want = load_images(root, channel_axis="last")
    got = tfrecord.load_tfrecords(tmp_path / "rec")  # "auto": the manifest's choice
    np.testing.assert_array_equal(got.images, want.images)
    batch = next(iter(tfrecord.make_tfrecord_dataset(str(tmp_path / "rec"), 4, shuffle=False,
                                                     labels=False)))
    np.testing.assert_array_equal(batch.numpy(), want.images)
    first = tfrecord.load_tfrecords(tmp_path / "rec", channel_axis="first")  # the flag wins
    np.testing.assert_array_equal(first.images, load_images(root, channel_axis="first").images)
    # Shards without a manifest: decided from every record's stored shape, as for folders.
    (tmp_path / "rec" / "manifest.json").unlink()
    with pytest.raises(DataError, match=rf"cannot tell which axis of these 4 3x3x3 arrays.*{HINT}"):
        tfrecord.load_tfrecords(tmp_path / "rec")
    np.testing.assert_array_equal(
        tfrecord.load_tfrecords(tmp_path / "rec", channel_axis="last").images, want.images)


# -- the CLI: inspect reports it, every data-reading command takes the flags -------------


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "kerasssl", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_inspect_reports_the_layout_and_why(tmp_path):
    root = write_set(tmp_path / "d", [(5, 16, 20)] * 4)
    proc = run_cli("inspect", root)
    assert proc.returncode == 0, proc.stderr
    assert ("layout   channels-first (C, H, W): the first axis has size 5 in all 4 files and is "
            "smaller than the other two") in proc.stdout.splitlines()
    summary = json.loads(run_cli("inspect", root, "--json", "--channels-last").stdout)
    assert summary["shape"] == [5, 16, 20]
    assert summary["channel_layout"]["axis"] == "last"
    assert summary["channel_layout"]["setting"] == "last"
    cubes = write_set(tmp_path / "cubes", [(3, 3, 3)] * 2)
    proc = run_cli("inspect", cubes)
    assert proc.returncode == 2 and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kerasssl")]
    assert len(errors) == 1 and "--channels-first or --channels-last" in errors[0]
