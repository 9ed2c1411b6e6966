"""`kerasssl convert` and TFRecord globs as DATA on the command line."""

import json

import numpy as np
import pytest
import tensorflow as tf

from kerasssl.cli import main
from kerasssl.data import tfrecord


def run(argv, capsys):
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_convert_writes_gzip_shards_manifest_and_progress(three_band_folder, tmp_path, capsys):
    out = tmp_path / "rec"
    code, stdout, stderr = run(["convert", three_band_folder, out, "--to", "tfrecord",
                                "--shards", "4", "--compression", "gzip"], capsys)
    assert code == 0, stderr
    assert "wrote 36 records (nonlenses 16, lenses 20) in 4 tfrecord shard(s)" in stdout
    assert "36/36" in stderr  # tqdm progress bar on stderr
    names = [f"data-{i:05d}-of-00004.tfrecord.gz" for i in range(4)]
    assert sorted(p.name for p in out.iterdir()) == names + ["manifest.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["compression"] == "gzip" and manifest["shards"] == 4
    assert manifest["class_names"] == ["nonlenses", "lenses"]
    assert manifest["counts"] == {"nonlenses": 16, "lenses": 20}
    assert sum(manifest["records_per_shard"]) == 36
    assert manifest["source"] == str(three_band_folder.resolve())
    assert manifest["kerasssl_version"]


def test_a_folder_of_one_class_gets_a_note_that_it_may_be_an_unlabeled_pool(tmp_path, capsys):
    pool = tmp_path / "pool"
    pool.mkdir()
    for k in range(3):
        np.save(pool / f"cutout_{k}.npy", np.zeros((8, 8), np.float32))  # no nl_ prefix: all "lens"
    code, stdout, stderr = run(["convert", pool, tmp_path / "labelled", "--no-progress"], capsys)
    assert code == 0 and "(nonlens 0, lens 3)" in stdout, stderr
    assert stderr.strip() == ("note: no nonlens images, so the records are all of one class; "
                              "if DATA is an unlabeled pool, convert it with --unlabeled")
    code, stdout, stderr = run(["convert", pool, tmp_path / "pool_shards", "--unlabeled", "--no-progress"], capsys)
    assert code == 0 and "note:" not in stderr, stderr


def test_inspect_gives_the_same_figures_on_folder_and_shards(hst_folder, tmp_path, capsys):
    out = tmp_path / "rec"
    assert run(["convert", hst_folder, out, "--shards", "3", "--no-progress"], capsys)[0] == 0
    code, folder_json, _ = run(["inspect", hst_folder, "--json"], capsys)
    assert code == 0
    code, shards_json, err = run(["inspect", f"{out}/*.tfrecord*", "--json"], capsys)
    assert code == 0, err
    folder, shards = json.loads(folder_json), json.loads(shards_json)
    assert shards["format"] == "tfrecord"
    assert shards["nan_pixels"] == folder["nan_pixels"] == 12
    for key in ("n_images", "classes", "shape", "min", "max", "nan_pixels", "inf_pixels",
                "files_with_nan", "per_class"):
        assert shards[key] == folder[key], key


def one_error_line(code, stderr, *fragments):
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kerasssl: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_truncated_shard_and_missing_label_exit_2_naming_the_shard(hst_folder, tmp_path, capsys):
    out = tmp_path / "rec"
    assert run(["convert", hst_folder, out, "--shards", "2", "--no-progress"], capsys)[0] == 0
    shard = out / "data-00001-of-00002.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-700])  # cut into the last record
    one_error_line(*run(["inspect", f"{out}/*.tfrecord*"], capsys)[::2],
                   "data-00001-of-00002.tfrecord: corrupt or truncated TFRecord at record 17 (truncated at byte ")

    lonely = tmp_path / "lonely"
    lonely.mkdir()
    example = tf.train.Example.FromString(
        tfrecord.encode_example(np.ones((16, 16), np.float32), 1, "lens", "a_hst.npy"))
    del example.features.feature["label"]
    with tf.io.TFRecordWriter(str(lonely / "x.tfrecord")) as writer:
        writer.write(example.SerializeToString())
    one_error_line(*run(["inspect", lonely / "x.tfrecord"], capsys)[::2],
                   "x.tfrecord: record 0: missing feature 'label'")


def test_convert_refuses_bad_arguments_with_exit_2(hst_folder, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("x")
    one_error_line(*run(["convert", hst_folder, taken], capsys)[::2],
                   "taken: already exists and is not an empty folder")
    one_error_line(*run(["convert", tmp_path / "nowhere", tmp_path / "o"], capsys)[::2],
                   "nowhere: no such file or folder")
    one_error_line(*run(["convert", hst_folder, tmp_path / "o", "--shards", "99"], capsys)[::2],
                   "more than the 36 images")
    for bad in (["--shards", "0"], ["--to", "csv"], ["--compression", "zip"]):
        code, _, stderr = run(["convert", hst_folder, tmp_path / "o", *bad], capsys)
        assert code == 2 and "Invalid value" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hst", "taken"]
