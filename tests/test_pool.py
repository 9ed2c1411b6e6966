"""Unlabeled pools: listing at any depth, header and content checks, --skip-bad, the leak guard,
convert/inspect --unlabeled, the streaming dataset, and the run's record (pretrain / fit / --resume)."""

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
import yaml

from conftest import fake_image, run_cli, write_class_folders
from kerasssl.config import RunConfig
from kerasssl.data.pool import check_headers, list_pool
from kerasssl.data.poolscan import describe_pool, leak_guard, scan_pool
from kerasssl.data.poolstream import make_pretraining_dataset
from kerasssl.errors import DataError
from kerasssl.fingerprints import TrainingFingerprints, fingerprint, fingerprints

TINY = {
    "data": {"seed": 1},
    "pretrain": {"method": "simclr", "encoder": "tiny", "epochs": 1, "batch_size": 16,
                 "steps_per_epoch": 2, "knn_monitor": False},
    "finetune": {"mode": "linear", "epochs": 1, "batch_size": 16},
    "evaluate": {"bootstrap": 20},
    "export": {"enabled": False},
}


def write_pool(root, n, size=16, seed=5, channels_first=True, nested=True):
    """A pool of ``n`` (3, size, size) cutouts; with ``nested`` in folders whose names look like classes."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / (("lenses", "nonlenses", "x/y/z")[i % 3] if nested else "")
        folder.mkdir(parents=True, exist_ok=True)
        image = fake_image(rng, size, lens=i % 7 == 0, channels=3)
        np.save(folder / f"cut_{i}.npy", np.moveaxis(image, -1, 0) if channels_first else image)
    (root / "metadata.csv").write_text("file,is_lens\n")  # a sidecar: not an image, not warned about
    return root


def scanned(path, **options):
    files, skipped = list_pool(path, skip_bad=options.get("skip_bad", False))
    layout = check_headers(files, skipped=skipped, **options)
    return scan_pool(layout, image_size=options.get("image_size"), skip_bad=options.get("skip_bad", False))


def test_folder_pool_any_depth_folder_names_mean_nothing(tmp_path):
    pool = write_pool(tmp_path / "pool", 12)
    scan = scanned(pool)
    assert len(scan.files.files) == 12 and scan.n_used == 12
    assert {f.split("/")[0] for f in scan.files.files} == {"lenses", "nonlenses", "x"}
    assert scan.image_shape == (16, 16, 3) and scan.layout.axis == "first"
    # Each fingerprint is that of the image as the model takes it (band axis moved, NaN kept).
    first = np.load(pool / scan.files.files[0])
    assert bytes(scan.fingerprints[0]) == fingerprint(np.moveaxis(first, 0, -1))
    summary = describe_pool([scan])
    assert summary["n_images"] == 12 and summary["classes"] == {"unlabeled": 12}
    assert summary["shape"] == [16, 16, 3] and summary["nan_pixels"] == 0


def test_bad_pool_files_strict_one_line_or_skipped_and_listed(tmp_path):
    pool = write_pool(tmp_path / "pool", 9)
    truncated = pool / "x/y/z/cut_2.npy"
    truncated.write_bytes(truncated.read_bytes()[:90])
    nan_band = pool / "lenses/cut_3.npy"
    image = np.load(nan_band)
    image[1] = np.nan
    np.save(nan_band, image)
    (pool / "nonlenses" / "pack.npz").write_bytes(b"PK\x05\x06" + bytes(18))
    with pytest.raises(DataError, match="pack.npz: is a .npz"):
        scanned(pool)
    (pool / "nonlenses" / "pack.npz").unlink()
    with pytest.raises(DataError, match="cut_2.npy: not a valid .npy file"):
        scanned(pool)  # the header pass: before any pixel is read
    truncated.unlink()
    with pytest.raises(DataError, match=r"cut_3.npy: band\(s\) \[1\] have only NaN"):
        scanned(pool)  # the content pass
    np.save(truncated, np.zeros((3, 8, 8), np.float32))  # smaller than the crop
    scan = scanned(pool, image_size=12, skip_bad=True)
    assert sorted(name for name, _ in scan.skipped) == ["lenses/cut_3.npy", "x/y/z/cut_2.npy"]
    assert scan.n_used == 7 and scan.image_shape == (12, 12, 3)


def test_leak_guard_takes_out_copies_of_held_out_images_and_the_stream_never_yields_them(tmp_path):
    held_out = [fake_image(np.random.default_rng(k), 16, lens=True, channels=3) for k in range(3)]
    pool = write_pool(tmp_path / "pool", 10)
    for k, image in enumerate(held_out):  # renamed, nested, stored channels-first: same content
        np.save(pool / "x" / f"copy_{k}.npy", np.moveaxis(image, -1, 0))
    scan = scanned(pool)
    guard = leak_guard([scan], fingerprints(np.stack(held_out)), ["test/a.npy", "test/b.npy", "val/c.npy"])
    assert guard.excluded == 3 and scan.n_used == 10
    assert sorted(m["equals"] for m in guard.matches) == ["test/a.npy", "test/b.npy", "val/c.npy"]
    assert {m["image"] for m in guard.matches} == {f"x/copy_{k}.npy" for k in range(3)}

    ds = make_pretraining_dataset([scan], batch_size=5, seed=0)
    seen = {bytes(row) for batch in ds.take(8) for row in fingerprints(batch.numpy())}  # 4 passes
    assert seen == {bytes(row) for row in scan.used_fingerprints}  # every kept image, nothing else
    assert not seen & {fingerprint(x) for x in held_out}


def test_convert_unlabeled_shards_and_both_kinds_of_shards_as_pools(tmp_path, capsys):
    pool = write_pool(tmp_path / "pool", 10)
    rec = tmp_path / "rec"
    code, out, err = run_cli(["convert", pool, rec, "--unlabeled", "--shards", "2", "--no-progress"], capsys)
    assert code == 0, err
    assert "wrote 10 records (unlabeled 10)" in out
    manifest = json.loads((rec / "manifest.json").read_text())
    assert manifest["labeled"] is False and set(manifest["features"]) == {"image", "shape", "filename"}
    first = next(iter(tf.data.TFRecordDataset(str(rec / manifest["files"][0]))))
    features = tf.train.Example.FromString(first.numpy()).features.feature
    assert "label" not in features and "class_name" not in features
    # A labelled reader says what the shards are, in one line.
    code, _, err = run_cli(["inspect", rec], capsys)
    assert code == 2 and err.count("\n") == 1 and "unlabeled pool" in err

    folder_scan, shard_scan = scanned(pool), scanned(f"{rec}/*.tfrecord*")
    assert shard_scan.files.kind == "tfrecord" and shard_scan.n_used == 10
    assert {bytes(r) for r in shard_scan.fingerprints} == {bytes(r) for r in folder_scan.fingerprints}
    ds = make_pretraining_dataset([shard_scan], batch_size=5, seed=0, shuffle_buffer=4)
    seen = {bytes(r) for batch in ds.take(6) for r in fingerprints(batch.numpy())}
    assert seen == {bytes(r) for r in shard_scan.fingerprints}

    # Labelled shards serve as a pool too (labels ignored).
    data = write_class_folders(tmp_path / "lab", {"lenses": 4, "nonlenses": 3}, size=16)
    code, _, err = run_cli(["convert", data, tmp_path / "labrec", "--no-progress"], capsys)
    assert code == 0, err
    assert scanned(tmp_path / "labrec").n_used == 7


def test_a_shard_broken_mid_file_is_refused_or_streamed_up_to_the_break(tmp_path, capsys):
    pool = write_pool(tmp_path / "pool", 10)
    rec = tmp_path / "rec"
    code, _, err = run_cli(["convert", pool, rec, "--unlabeled", "--shards", "2", "--no-progress"], capsys)
    assert code == 0, err
    manifest = json.loads((rec / "manifest.json").read_text())
    shard = rec / manifest["files"][1]
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(shard))]
    frame = len(shard.read_bytes()) // len(records)  # every record has the same size here
    shard.write_bytes(shard.read_bytes()[:3 * frame + frame // 2])  # 3 whole records, then half of one
    with pytest.raises(DataError, match=r"corrupt or truncated TFRecord at record 3 \(truncated at byte"):
        scanned(rec)
    scan = scanned(rec, skip_bad=True)
    assert scan.n_used == manifest["records_per_shard"][0] + 3 and scan.shard_ends == {1: 3}
    assert scan.skipped == [(f"{shard} record 3", scan.skipped[0][1])]
    assert scan.skipped[0][1].endswith(": the rest of the shard cannot be read")
    # The stream stops at the break: no read error, every readable record, nothing else.
    ds = make_pretraining_dataset([scan], batch_size=4, seed=0, shuffle_buffer=4)
    seen = {bytes(r) for batch in ds.take(12) for r in fingerprints(batch.numpy())}
    assert seen == {bytes(r) for r in scan.fingerprints}


def test_inspect_unlabeled_reports_counts_shapes_nan(tmp_path, capsys):
    pool = write_pool(tmp_path / "pool", 6, channels_first=False)
    image = np.load(pool / "lenses/cut_0.npy")
    image[2, 3, 0] = np.nan
    np.save(pool / "lenses/cut_0.npy", image)
    code, out, err = run_cli(["inspect", pool, "--unlabeled", "--json"], capsys)
    assert code == 0, err
    s = json.loads(out)
    assert (s["format"], s["n_images"], s["shape"], s["nan_pixels"], s["files_with_nan"]) == \
        ("pool", 6, [16, 16, 3], 1, 1)
    assert s["nonfinite_files"] == ["lenses/cut_0.npy"] and s["channel_layout"]["axis"] == "last"
    code, out, err = run_cli(["inspect", pool, "--unlabeled"], capsys)
    assert code == 0 and "unlabeled" in out and "format   pool" in out


def test_pretrain_on_a_pool_alone_records_it_and_resume_refuses_a_changed_pool(tmp_path, capsys):
    pool = write_pool(tmp_path / "pool", 20)
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    shutil.copy(bad, pool / "x" / "broken.npy")
    run = tmp_path / "run"
    argv = ["pretrain", "--unlabeled", pool, "--run-dir", run, "--encoder", "tiny", "--epochs", "1",
            "--batch-size", "8", "--steps-per-epoch", "2"]
    code, _, err = run_cli(argv, capsys)  # strict: the bad file stops it before anything is written
    assert code == 2 and err.count("\n") == 1 and "broken.npy" in err
    assert not run.exists()

    code, out, err = run_cli(argv + ["--skip-bad"], capsys)
    assert code == 0, err
    assert "unlabeled images used: 20" in out
    record = json.loads((run / "pools.json").read_text())
    assert record["unlabeled_images"] == 20 and record["pools"][0]["skipped"] == 1
    assert record["pools"][0]["files"] == 21 and record["pools"][0]["bytes"] > 0
    assert (run / "skipped_files.txt").read_text().count("broken.npy") == 1
    assert not (run / "split.json").exists()  # no DATA: no split
    assert RunConfig.load(run / "config.yaml").pretrain.unlabeled == [str(pool)]
    assert TrainingFingerprints.read(run / "encoder.keras").count("pretrain") == 20

    np.save(pool / "lenses" / "new.npy", np.zeros((3, 16, 16), np.float32))
    code, _, err = run_cli(["pretrain", "--run-dir", run, "--resume", "--epochs", "2"], capsys)
    assert code == 2 and err.count("\n") == 1 and "pool changed since" in err
    (pool / "lenses" / "new.npy").unlink()
    code, _, err = run_cli(["pretrain", "--run-dir", run, "--resume", "--epochs", "2"], capsys)
    assert code == 0, err
    assert len(json.loads((run / "history.json").read_text())["loss"]) == 2


def test_pool_that_does_not_match_data_is_refused(tmp_path, capsys):
    data = write_class_folders(tmp_path / "lab", {"lenses": 8, "nonlenses": 8}, size=16, channels=1)
    pool = write_pool(tmp_path / "pool", 4)
    run = tmp_path / "run"
    code, _, err = run_cli(["pretrain", data, "--unlabeled", pool, "--run-dir", run, "--encoder", "tiny",
                         "--epochs", "1", "--batch-size", "4", "--steps-per-epoch", "1"], capsys)
    assert code == 2 and err.count("\n") == 1 and "3 band(s) but the labelled images have 1" in err
    assert not run.exists()


def test_a_pool_given_twice_under_other_names_is_refused(tmp_path, capsys):
    from kerasssl.data.pool import convert_pool

    pool = write_pool(tmp_path / "pool", 6)
    (tmp_path / "link").symlink_to(pool)
    convert_pool(pool, tmp_path / "shards", shards=2, progress=False)
    shards = tmp_path / "shards"
    cases = [([f"{pool}/", pool], f"{pool}: is the same folder as the pool {pool}/"),
             ([pool, tmp_path / "link"], f"{tmp_path / 'link'}: is the same folder as the pool {pool}"),
             ([pool, pool / "x"], f"{pool / 'x'}: overlaps the pool {pool}"),
             ([shards, f"{shards}/*.tfrecord"], f"{shards}/*.tfrecord: reads the shard {shards}/data-00000-of-00002")]
    for pools, message in cases:
        run = tmp_path / "run"
        args = ["pretrain", "--run-dir", run, "--encoder", "tiny", "--epochs", "1", "--batch-size", "4"]
        for path in pools:
            args += ["--unlabeled", path]
        code, _, err = run_cli(args, capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith(f"kerasssl: error: {message}"), err
        assert "streamed twice; give each pool once" in err, err
        assert not run.exists()
    # sibling folders of one tree are separate pools
    code, _, err = run_cli(["pretrain", "--run-dir", tmp_path / "run", "--unlabeled", pool / "lenses",
                            "--unlabeled", pool / "nonlenses", "--encoder", "tiny", "--epochs", "1",
                            "--batch-size", "4"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "pools.json").read_text())["unlabeled_images"] == 4


def test_fit_with_a_pool_holding_test_images_never_pretrains_on_them(tmp_path, capsys, monkeypatch):
    data = write_class_folders(tmp_path / "lab", {"lenses": 20, "nonlenses": 20}, size=16)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "data": {"seed": 1, "normalization": "dataset"}}))
    cfg = RunConfig.load(config)
    from kerasssl.data.load import load_images
    from kerasssl.data.split import make_split

    image_set = load_images(data)
    split = make_split(image_set, cfg.data.val_fraction, cfg.data.test_fraction, 1.0, cfg.data.seed)
    pool = write_pool(tmp_path / "pool", 24)
    for k, name in enumerate(split.test):  # a survey pool holds the known lenses
        shutil.copy(data / name, pool / "x" / f"known_{k}.npy")
    test_fps = {bytes(r) for r in fingerprints(image_set.images[split.indices(image_set, "test")])}

    seen = []  # the test hook: fingerprints of every image the training stream yields

    import kerasssl.data.poolstream as poolstream

    real = poolstream.make_pretraining_dataset

    def recording(*args, **kwargs):
        def record(batch):
            seen.extend(bytes(r) for r in fingerprints(batch))
            return batch

        return real(*args, **kwargs).map(
            lambda b: tf.ensure_shape(tf.numpy_function(record, [b], tf.float32), b.shape))

    monkeypatch.setattr(poolstream, "make_pretraining_dataset", recording)
    run = tmp_path / "run"
    # 6 steps x 16 = 96 images drawn from 24 pool + 28 train images: every pool image comes up.
    code, out, err = run_cli(["fit", data, "--unlabeled", pool, "--run-dir", run, "--config", config,
                           "--epochs", "3"], capsys)
    assert code == 0, err
    assert len(seen) >= 6 * 16  # (Keras may prefetch a batch or two more)
    assert not set(seen) & test_fps
    kept = {bytes(r) for r in fingerprints(np.stack([np.moveaxis(np.load(p), 0, -1) for p in
                                                     sorted(pool.rglob("cut_*.npy"))]))}
    assert set(seen) & kept  # the pool was streamed
    report = json.loads((run / "report.json").read_text())
    used = report["pretraining_data"]
    assert used["unlabeled_images"] == 24 and used["leak_guard_excluded"] == len(split.test)
    assert "the leak guard left out %d" % len(split.test) in out
    record = json.loads((run / "pools.json").read_text())
    assert record["normalization_sample"]["pool_images"] == 24
    assert record["train_split_images"] == len(split.train)


@pytest.mark.parametrize("pretrain, message", [
    ({"unlabeled": 5}, "pretrain.unlabeled must be a list"),
    ({"unlabeled": ["a", "a"]}, "names a pool twice"),
    ({"shuffle_buffer": 0}, "pretrain.shuffle_buffer must be a positive integer"),
    ({"skip_bad": "yes"}, "pretrain.skip_bad must be true or false"),
])
def test_pool_config_values_are_checked(pretrain, message):
    from kerasssl.errors import KerassslError

    # The pretrain section validates itself when the config is built.
    with pytest.raises(KerassslError, match=message):
        RunConfig.from_dict({"pretrain": {"encoder": "tiny", **pretrain}})


def test_pool_from_the_config_file_and_no_data_nor_pool_is_a_usage_error(tmp_path, capsys):
    code, _, err = run_cli(["pretrain", "--run-dir", tmp_path / "run", "--encoder", "tiny"], capsys)
    assert code == 2 and err.count("\n") == 1 and "give DATA, or --unlabeled POOL" in err
    pool = write_pool(tmp_path / "pool", 3, nested=False)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"pretrain": {"unlabeled": [str(pool / "missing")]}}))
    code, _, err = run_cli(["pretrain", "--run-dir", tmp_path / "run", "--config", config, "--encoder", "tiny"],
                        capsys)
    assert code == 2 and err.count("\n") == 1 and "missing: no such file or folder" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("variant", ["first-f4", "last-i2", "plane-f8", "big-endian", "mixed-dtypes"])
def test_the_stream_yields_exactly_the_fingerprinted_images(tmp_path, variant):
    # Uniform .npy pools are decoded in TF ops, others by the NumPy reader: both must give
    # the content pass's images (band axis, crop offset, dtype cast) bit for bit.
    rng = np.random.default_rng(3)
    root = tmp_path / "pool"
    root.mkdir()
    for i in range(6):
        image = fake_image(rng, 19, lens=i % 2 == 0, channels=1 if variant == "plane-f8" else 3)
        if variant == "first-f4":
            stored = np.moveaxis(image, -1, 0)
        elif variant == "last-i2":
            stored = (image * 100).astype(np.int16)
        elif variant == "plane-f8":
            stored = image[..., 0].astype(np.float64) / 3
        elif variant == "big-endian":
            stored = np.moveaxis(image, -1, 0).astype(">f4")
        else:
            stored = image.astype(np.float64 if i == 4 else np.float32)
        np.save(root / f"c{i}.npy", stored)
    scan = scanned(root, image_size=16)
    assert (scan.raw_layout is None) == (variant == "mixed-dtypes")
    assert scan.image_shape == (16, 16, 1 if variant == "plane-f8" else 3)
    ds = make_pretraining_dataset([scan], batch_size=3, seed=1, image_size=16)
    seen = {bytes(r) for batch in ds.take(4) for r in fingerprints(batch.numpy())}
    assert seen == {bytes(r) for r in scan.fingerprints}


def test_a_pool_file_that_breaks_during_pretraining_stops_it_in_one_line(tmp_path, capsys, monkeypatch):
    pool = write_pool(tmp_path / "pool", 8, nested=False)
    import kerasssl.data.poolstream as poolstream

    real = poolstream.make_pretraining_dataset

    def truncate_then_stream(*args, **kwargs):  # after the content pass checked it
        victim = pool / "cut_5.npy"
        victim.write_bytes(victim.read_bytes()[:300])
        return real(*args, **kwargs)

    monkeypatch.setattr(poolstream, "make_pretraining_dataset", truncate_then_stream)
    code, _, err = run_cli(["pretrain", "--unlabeled", pool, "--run-dir", tmp_path / "run", "--encoder", "tiny",
                         "--epochs", "1", "--batch-size", "4", "--steps-per-epoch", "4"], capsys)
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("kerasssl")]
    assert len(errors) == 1 and "reading the pool failed during pretraining" in errors[0]
    assert "Traceback" not in err
