"""`kerasssl scan`: a survey -> a catalogue sorted by lens probability, the same from .keras,
SavedModel and .tflite, from folders at any depth and from TFRecords (labelled or not),
resumable after SIGKILL with no row twice or missing, bad files strict or skipped."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import fake_image, write_hst_folder
from kerasssl.errors import DataError
from kerasssl.predict import predict_files
from kerasssl.scan import read_catalogue, scan_survey, work_dir_of
from test_export import SIZE, make_classifier, shared_export


@pytest.fixture
def exported(tmp_path_factory):
    return shared_export(tmp_path_factory)


def nested_survey(root, seed=0):
    """A pool at three depths (flat, one folder down, two down) plus a sidecar file."""
    write_hst_folder(root, 3, 2, size=SIZE + 4, nan_files=1, seed=seed)
    write_hst_folder(root / "field_a", 2, 3, size=SIZE + 4, seed=seed + 1)
    write_hst_folder(root / "field_b" / "night_2", 2, 2, size=SIZE, seed=seed + 2)
    (root / "metadata.csv").write_text("not,an,image\n")
    return root


def reference(model, root):
    """{id relative to root: probabilities} from `kerasssl predict`'s reader."""
    result = predict_files(model, [root])
    return {os.path.relpath(f, root): p for f, p in zip(result.files, result.probabilities)}


def cli(args, capsys):
    from kerasssl.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    captured = capsys.readouterr()
    return e.value.code, captured.err.strip()


def test_keras_savedmodel_and_tflite_give_the_same_sorted_catalogue(exported, tmp_path, capsys):
    _, run, version_dir = exported
    survey = nested_survey(tmp_path / "survey")
    want = reference(run / "classifier.keras", survey)
    assert len(want) == 14 and "field_b/night_2/0_hst.npy" in want
    models = {"keras": (run / "classifier.keras", "csv", 1e-6),
              "saved_model": (version_dir.parent, "parquet", 1e-5),
              "tflite": (version_dir / "lens_finder_fp32.tflite", "csv", 1e-4)}
    for kind, (model, fmt, tol) in models.items():
        out = tmp_path / f"cand_{kind}.{fmt}"
        code, err = cli(["scan", str(model), str(survey), "--out", str(out), "--batch-size", "4",
                         "--format", fmt, "--quiet"], capsys)
        assert code == 0, err
        table = read_catalogue(out)
        assert list(table) == ["id", "lens_probability"], kind
        assert sorted(table["id"]) == sorted(want), kind
        p = np.asarray(table["lens_probability"])
        assert np.all(np.diff(p) <= 0), kind  # most probable lens first
        np.testing.assert_allclose(p, [want[i][1] for i in table["id"]], atol=tol, err_msg=kind)
        assert not work_dir_of(out).exists(), kind

    code, err = cli(["scan", str(run / "classifier.keras"), str(survey), "--out", str(tmp_path / "top.csv"),
                     "--top", "3"], capsys)
    assert code == 0 and "scanned 14 image(s)" in err and "wrote 3 row(s)" in err, err
    full = read_catalogue(tmp_path / "cand_keras.csv")
    assert read_catalogue(tmp_path / "top.csv")["id"] == full["id"][:3]
    cut = float(np.median(full["lens_probability"]))
    code, _ = cli(["scan", str(run / "classifier.keras"), str(survey), "--out", str(tmp_path / "cut.csv"),
                   "--threshold", str(cut), "-q"], capsys)
    kept = read_catalogue(tmp_path / "cut.csv")
    assert code == 0 and kept["id"] == [i for i, p in zip(full["id"], full["lens_probability"]) if p >= cut]


def test_embeddings_are_the_encoder_features_of_each_row(exported, tmp_path):
    from kerasssl.classifier import classifier_parts
    from kerasssl.survey import ImageReader

    model, run, version_dir = exported
    survey = nested_survey(tmp_path / "survey", seed=5)
    features = classifier_parts(model).features
    reader = ImageReader((SIZE, SIZE, 1))
    for path in (run / "classifier.keras", version_dir):
        result = scan_survey(path, [survey], tmp_path / "c.csv", embeddings=tmp_path / "e.npy", batch_size=3,
                             progress=False)
        ids, emb = read_catalogue(result.out)["id"], np.load(tmp_path / "e.npy")
        assert emb.shape == (14, 6)
        images = np.stack([reader.read_file(survey / i) for i in ids])
        np.testing.assert_allclose(emb, np.asarray(features(images)), atol=1e-5, err_msg=str(path))
        full = emb
    top = scan_survey(version_dir, [survey], tmp_path / "top.csv", embeddings=tmp_path / "top.npy", top=4,
                      progress=False)
    assert read_catalogue(top.out)["id"] == ids[:4]
    np.testing.assert_allclose(np.load(tmp_path / "top.npy"), full[:4], atol=1e-6)
    with pytest.raises(DataError, match="no features output"):
        scan_survey(version_dir / "lens_finder_fp32.tflite", [survey], tmp_path / "t.csv",
                    embeddings=tmp_path / "t.npy")


def test_the_reader_checks_every_file_even_when_it_knows_the_header(tmp_path):
    from kerasssl.data.arrays import read_array
    from kerasssl.survey import ImageReader

    rng = np.random.default_rng(0)
    reader = ImageReader((8, 8, 3))
    first = rng.normal(size=(3, 10, 10)).astype(np.float32)
    np.save(tmp_path / "a.npy", first)
    np.save(tmp_path / "b.npy", first + 1)
    np.testing.assert_array_equal(reader.read_file(tmp_path / "a.npy"), np.moveaxis(first, 0, -1)[1:9, 1:9])
    np.testing.assert_array_equal(reader.read_file(tmp_path / "b.npy"), np.moveaxis(first + 1, 0, -1)[1:9, 1:9])
    (tmp_path / "short.npy").write_bytes((tmp_path / "b.npy").read_bytes()[:-8])  # same header, data cut
    with pytest.raises(DataError, match="truncated"):
        reader.read_file(tmp_path / "short.npy")
    other = np.asfortranarray(rng.normal(size=(10, 10, 3)))  # another header: float64, Fortran order
    np.save(tmp_path / "c.npy", other)
    np.testing.assert_array_equal(reader.read_file(tmp_path / "c.npy"),
                                  read_array(tmp_path / "c.npy")[1:9, 1:9])
    np.save(tmp_path / "d.npy", np.zeros((3, 10, 10), np.int32).astype(">i4"))  # big-endian ints
    assert reader.read_file(tmp_path / "d.npy").dtype == np.float32


def unlabeled_shard(path, arrays):
    """A shard of image + shape features only (no label, class_name or filename)."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for a in arrays:
            a = np.ascontiguousarray(a, "<f4")
            feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[a.tobytes()])),
                       "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=list(a.shape)))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def test_tfrecords_labelled_or_unlabeled_give_shard_record_ids(exported, tmp_path):
    from kerasssl.data.tfrecord import write_tfrecords

    _, run, _ = exported
    folder = write_hst_folder(tmp_path / "hst", 3, 3, size=SIZE + 2, nan_files=1, seed=3)
    want = reference(run / "classifier.keras", folder)
    write_tfrecords(folder, tmp_path / "rec", shards=2, progress=False)
    labelled = read_catalogue(scan_survey(run / "classifier.keras", [str(tmp_path / "rec" / "*.tfrecord*")],
                                          tmp_path / "rec.csv", batch_size=2, progress=False).out)
    assert sorted(labelled["id"]) == sorted(f"data-0000{s}-of-00002.tfrecord:{k}" for s in (0, 1) for k in range(3))
    np.testing.assert_allclose(sorted(labelled["lens_probability"]), sorted(p[1] for p in want.values()), atol=1e-6)

    names = sorted(want)
    (tmp_path / "pool").mkdir()
    unlabeled_shard(tmp_path / "pool" / "pool.tfrecord", [np.load(folder / n) for n in names])
    pool = read_catalogue(scan_survey(run / "classifier.keras", [tmp_path / "pool"], tmp_path / "pool.csv",
                                      progress=False).out)
    got = dict(zip(pool["id"], pool["lens_probability"]))
    assert sorted(got) == [f"pool.tfrecord:{k}" for k in range(6)]
    for k, name in enumerate(names):
        assert abs(got[f"pool.tfrecord:{k}"] - want[name][1]) < 1e-6


def test_a_multiclass_model_has_a_column_per_other_class(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    model = make_classifier(n_classes=3)
    model.save(run / "classifier.keras")
    (run / "runs.jsonl").write_text(json.dumps({"time": "t", "argv": []}) + "\n")
    survey = write_hst_folder(tmp_path / "s", 2, 2, size=SIZE)
    for names, extra, columns in ((["nonlens", "lens", "merger"], [], ["p_nonlens", "p_merger"]),
                                  (["axion", "cdm", "no_sub"], ["--lens-class", "cdm"], ["p_axion", "p_no_sub"])):
        (run / "finetune.json").write_text(json.dumps({"class_names": names}))
        out = tmp_path / "m.csv"
        code, err = cli(["scan", str(run / "classifier.keras"), str(survey), "--out", str(out), "-q"] + extra, capsys)
        assert code == 0, err
        table = read_catalogue(out)
        assert list(table) == ["id", "lens_probability"] + columns
        probs = np.asarray(model(np.stack([np.load(survey / i)[..., None] for i in table["id"]]), training=False))
        # the lens class is column 1 in both cases; the others in label order
        np.testing.assert_allclose(np.stack([table[columns[0]], table["lens_probability"], table[columns[1]]], 1),
                                   probs, atol=1e-6)
    code, err = cli(["scan", str(run / "classifier.keras"), str(survey), "--out", str(out)], capsys)
    assert code == 2 and "--lens-class" in err and "\n" not in err, err


def bad_survey(root):
    write_hst_folder(root, 3, 3, size=SIZE, seed=9)
    (root / "b_corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(root / "c_small.npy", np.zeros((SIZE - 2, SIZE - 2), np.float32))
    np.savez(root / "d_archive.npz", image=np.zeros((SIZE, SIZE), np.float32))
    return root


def test_bad_files_stop_the_scan_with_nothing_written_or_are_skipped_and_listed(exported, tmp_path, capsys):
    _, run, _ = exported
    survey = bad_survey(tmp_path / "survey")
    out = tmp_path / "out" / "cand.csv"
    code, err = cli(["scan", str(run / "classifier.keras"), str(survey), "--out", str(out)], capsys)
    assert code == 2 and err.startswith("kerasssl: error:") and "\n" not in err and "Traceback" not in err, err
    assert "b_corrupt.npy" in err and "--skip-bad" in err, err
    assert not out.exists() and not work_dir_of(out).exists() and not (tmp_path / "out" / "cand.csv.skipped.txt").exists()

    code, err = cli(["scan", str(run / "classifier.keras"), str(survey), "--out", str(out), "--batch-size", "2",
                     "--skip-bad"], capsys)
    assert code == 0 and "skipped 3 unreadable" in err, err
    assert sorted(read_catalogue(out)["id"]) == sorted(p.name for p in survey.glob("*_hst.npy"))
    listed = (tmp_path / "out" / "cand.csv.skipped.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in listed] == ["b_corrupt.npy", "c_small.npy", "d_archive.npz"]
    assert "smaller than the model input" in listed[1] and ".npz archive" in listed[2]


def test_a_survey_with_no_images_is_refused_not_an_empty_catalogue(exported, tmp_path, capsys):
    _, run, _ = exported
    empty = tmp_path / "empty.tfrecord"
    empty.write_bytes(b"")
    out = tmp_path / "c.csv"
    code, err = cli(["scan", str(run / "classifier.keras"), str(empty), "--out", str(out)], capsys)
    assert code == 2 and err.strip() == f"kerasssl: error: {empty}: holds no images to scan", err
    assert not out.exists() and not work_dir_of(out).exists()
    code, err = cli(["index", str(run / "classifier.keras"), str(empty), "--out", str(tmp_path / "idx")], capsys)
    assert code == 2 and "nothing to index: the survey holds no images" in err, err
    assert not (tmp_path / "idx").exists()


def test_an_image_given_twice_is_refused_with_where_it_came_from(exported, tmp_path, capsys):
    from kerasssl.survey import list_survey

    root = tmp_path / "survey"
    write_hst_folder(root / "sub", 2, 2, size=SIZE)
    image = root / "sub" / sorted(os.listdir(root / "sub"))[0]
    (tmp_path / "list.txt").write_text(f"{image}\n{image}\n")
    cases = [([root, root], f"{image}: given twice; give each image once"),
             ([root, root / "sub"], f"{image}: given by both {root} and {root / 'sub'}; give each image once"),
             ([root, image], f"{image}: given by both {root} and {image}; give each image once"),
             ([tmp_path / "list.txt"], f"{image}: listed twice in {tmp_path / 'list.txt'}")]
    for arguments, message in cases:
        with pytest.raises(DataError) as e:
            list_survey(arguments)
        assert str(e.value).startswith(message), (arguments, str(e.value))
    _, run, _ = exported
    out = tmp_path / "c.csv"
    code, err = cli(["scan", str(run / "classifier.keras"), str(root), str(root / "sub"), "--out", str(out)], capsys)
    assert code == 2 and err == f"kerasssl: error: {cases[1][1]}", err
    assert not out.exists() and not work_dir_of(out).exists()


def test_a_format_that_contradicts_the_out_suffix_is_refused_before_the_scan(exported, tmp_path, capsys):
    _, run, _ = exported
    survey = nested_survey(tmp_path / "survey", seed=8)
    for name, fmt in (("c.parquet", "csv"), ("c.PQ", "csv"), ("c.csv", "parquet")):
        out = tmp_path / name
        code, err = cli(["scan", str(run / "classifier.keras"), str(survey), "--out", str(out), "--format", fmt],
                        capsys)
        assert code == 2 and err.startswith(f"kerasssl: error: {out}: is a .") and f"--format is {fmt}" in err, err
        assert not out.exists() and not work_dir_of(out).exists()
    code, err = cli(["scan", str(run / "classifier.keras"), str(survey), "--out", str(tmp_path / "cands"),
                     "--format", "parquet", "-q"], capsys)  # no suffix: --format decides
    assert code == 0, err
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "cands").num_rows == 14


def test_embeddings_path_is_checked_before_the_scan_and_its_folder_made(exported, tmp_path, capsys):
    _, run, _ = exported
    survey = nested_survey(tmp_path / "survey", seed=7)
    out = tmp_path / "c.csv"
    (tmp_path / "a_folder").mkdir()
    own = "give --embeddings its own file"
    for embeddings, problem in ((tmp_path / "a_folder", "is a folder; --embeddings names the .npy file"),
                                (out, f"is also --out; {own}"),
                                (tmp_path / "c.csv.skipped.txt", f"is also the skipped-items list; {own}")):
        code, err = cli(["scan", str(run / "classifier.keras"), str(survey), "--out", str(out),
                         "--embeddings", str(embeddings), "-q"], capsys)
        assert code == 2 and err == f"kerasssl: error: {embeddings}: {problem}", err
        assert not out.exists() and not work_dir_of(out).exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder", "survey"]
    # a folder that does not exist yet is made, as --out's is
    deep = tmp_path / "features" / "run_1" / "e.npy"
    code, err = cli(["scan", str(run / "classifier.keras"), str(survey), "--out", str(out),
                     "--embeddings", str(deep), "-q"], capsys)
    assert code == 0, err
    assert np.load(deep).shape == (14, 6) and len(read_catalogue(out)["id"]) == 14


def test_a_truncated_shard_is_refused_or_skipped_after_its_readable_records(exported, tmp_path, capsys):
    _, run, _ = exported
    rng = np.random.default_rng(2)
    (tmp_path / "rec").mkdir()
    shard = tmp_path / "rec" / "part.tfrecord"
    unlabeled_shard(shard, [fake_image(rng, SIZE, k % 2 == 0)[..., 0] for k in range(6)])
    shard.write_bytes(shard.read_bytes()[:-30])  # the last record loses its tail
    out = tmp_path / "c.csv"
    code, err = cli(["scan", str(run / "classifier.keras"), str(shard), "--out", str(out), "--batch-size", "4"], capsys)
    assert code == 2 and str(shard) in err and "corrupt or truncated TFRecord at record 5" in err, err
    assert "(truncated at byte " in err and "function_node" not in err and "' failed" not in err, err
    assert not out.exists()
    code, err = cli(["scan", str(run / "classifier.keras"), str(shard), "--out", str(out), "--batch-size", "4",
                     "--skip-bad"], capsys)
    assert code == 0, err
    assert sorted(read_catalogue(out)["id"]) == [f"part.tfrecord:{k}" for k in range(5)]
    assert (tmp_path / "c.csv.skipped.txt").read_text().startswith("part.tfrecord:5\t")


SLOW_SCAN = r"""
import sys, time
from kerasssl.inference import load_survey_model
from kerasssl.scan import scan_survey

model = load_survey_model(sys.argv[1])
run = model.run

def slow(images, **kwargs):
    time.sleep(0.1)
    return run(images, **kwargs)

model.run = slow
scan_survey(model, [sys.argv[2]], sys.argv[3], batch_size=2, commit_items=2, progress=False)
"""


def committed_chunks(work):
    try:
        return (work / "chunks.jsonl").read_bytes().count(b"\n")
    except OSError:
        return 0


def test_a_killed_scan_resumes_with_no_row_twice_or_missing(exported, tmp_path, capsys):
    _, run, _ = exported
    model = run / "classifier.keras"
    rng = np.random.default_rng(4)
    survey = tmp_path / "pool"
    survey.mkdir()
    for k in range(60):
        np.save(survey / f"pool_{k}.npy", fake_image(rng, SIZE, k % 5 == 0)[..., 0])
    out = tmp_path / "cand.csv"
    work = work_dir_of(out)
    child = subprocess.Popen([sys.executable, "-c", SLOW_SCAN, str(model), str(survey), str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while committed_chunks(work) < 3 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    done = committed_chunks(work)
    assert 3 <= done < 30 and not out.exists()
    # as if killed in the middle of writing a chunk: a torn line and half a row of probabilities
    with open(work / "chunks.jsonl", "ab") as f:
        f.write(b'{"rows":2,"ids":["pool_58.npy"')
    with open(work / "probabilities.f32", "ab") as f:
        f.write(b"\0" * 12)

    code, err = cli(["scan", str(model), str(survey), "--out", str(out)], capsys)
    assert code == 2 and "--resume" in err, err  # a work folder is never silently thrown away
    code, err = cli(["scan", str(model), str(survey), "--out", str(out), "--resume"], capsys)
    assert code == 0, err
    assert not work.exists()
    resumed = read_catalogue(out)
    whole = read_catalogue(scan_survey(model, [survey], tmp_path / "whole.csv", progress=False).out)
    assert len(resumed["id"]) == len(set(resumed["id"])) == 60
    assert sorted(resumed["id"]) == sorted(whole["id"])
    got = dict(zip(resumed["id"], resumed["lens_probability"]))
    np.testing.assert_allclose([got[i] for i in whole["id"]], whole["lens_probability"], atol=1e-6)


def test_resume_refuses_a_work_folder_of_another_survey_and_keeps_an_interrupted_chunk(exported, tmp_path, capsys):
    from kerasssl.inference import load_survey_model

    _, run, _ = exported
    survey = write_hst_folder(tmp_path / "s", 5, 5, size=SIZE, seed=6)
    out = tmp_path / "c.csv"
    model = load_survey_model(run / "classifier.keras")
    run_batch, calls = model.run, []

    def interrupted(images, **kwargs):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return run_batch(images, **kwargs)

    model.run = interrupted
    with pytest.raises(KeyboardInterrupt):
        scan_survey(model, [survey], out, batch_size=2, progress=False)
    assert committed_chunks(work_dir_of(out)) == 1  # the two scored batches were kept

    np.save(survey / "new.npy", np.zeros((SIZE, SIZE), np.float32))
    code, err = cli(["scan", str(run / "classifier.keras"), str(survey), "--out", str(out), "--resume"], capsys)
    assert code == 2 and "another survey listing" in err, err
    (survey / "new.npy").unlink()
    calls.clear()
    model.run = lambda images, **kwargs: (calls.append(len(images)), run_batch(images, **kwargs))[1]
    result = scan_survey(model, [survey], out, batch_size=2, resume=True, progress=False)
    assert result.scanned == 10 and sum(calls) == 6  # 4 images were done before the interruption
    want = reference(run / "classifier.keras", survey)
    table = read_catalogue(out)
    np.testing.assert_allclose(table["lens_probability"], [want[i][1] for i in table["id"]], atol=1e-6)


def test_resume_from_any_point_of_a_survey_of_folders_and_shards_matches_one_scan(exported, tmp_path):
    from kerasssl.data.tfrecord import write_tfrecords
    from kerasssl.inference import load_survey_model

    _, run, _ = exported
    folder = write_hst_folder(tmp_path / "hst", 3, 3, size=SIZE, seed=11)
    write_tfrecords(folder, tmp_path / "rec", shards=2, progress=False)
    rng = np.random.default_rng(12)
    (tmp_path / "broken").mkdir()
    broken = tmp_path / "broken" / "b.tfrecord"
    unlabeled_shard(broken, [fake_image(rng, SIZE, True)[..., 0] for _ in range(4)])
    broken.write_bytes(broken.read_bytes()[:-20])
    survey = [folder, broken, str(tmp_path / "rec" / "*.tfrecord")]
    model = load_survey_model(run / "classifier.keras")
    run_batch = model.run
    whole = scan_survey(model, survey, tmp_path / "whole.csv", batch_size=2, skip_bad=True, progress=False)
    want = read_catalogue(whole.out)
    assert whole.scanned == 15 and [s[0] for s in whole.skipped] == [f"{broken}:3"]
    # several SURVEY arguments: each id carries its own in front
    assert sorted(want["id"]) == sorted([f"{folder}/{p.name}" for p in folder.glob("*.npy")]
                                        + [f"{tmp_path}/rec/data-0000{s}-of-00002.tfrecord:{k}"
                                           for s in (0, 1) for k in range(3)] + [f"{broken}:{k}" for k in range(3)])
    # model calls: 3 for the folder; 3 for the broken shard (a whole batch, the records read one by one
    # after the break, the break itself); 2 for each labelled shard
    for stop_at in (2, 4, 5, 6, 7, 9):
        calls = []

        def interrupted(images, **kwargs):
            calls.append(1)
            if len(calls) == stop_at:
                raise KeyboardInterrupt
            return run_batch(images, **kwargs)

        out = tmp_path / f"r{stop_at}.csv"
        model.run = interrupted
        with pytest.raises(KeyboardInterrupt):
            scan_survey(model, survey, out, batch_size=2, skip_bad=True, progress=False)
        model.run = run_batch
        result = scan_survey(model, survey, out, batch_size=2, skip_bad=True, resume=True, progress=False)
        got = read_catalogue(out)
        assert got["id"] == want["id"] and result.skipped == whole.skipped, stop_at
        np.testing.assert_allclose(got["lens_probability"], want["lens_probability"], atol=1e-6)
