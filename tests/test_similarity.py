"""`kerasssl index` / `kerasssl similar`: a faiss index of a survey's encoder features, whose
neighbours of known lenses are enriched in lenses; refused when queried through another model."""

import hashlib
import json
import shutil

import keras
import numpy as np
import pytest

from conftest import fake_image, write_hst_folder
from kerasssl.errors import DataError
from kerasssl.similarity import build_index, choose_kind, ivf_lists, load_index, similar
from test_export import SIZE, make_classifier, shared_export


@pytest.fixture
def exported(tmp_path_factory):
    return shared_export(tmp_path_factory)


def cli(args, capsys):
    from kerasssl.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code, capsys.readouterr().err.strip()


def trained_classifier(path, seed=0):
    """A tiny classifier trained on ring / no-ring fakes until it separates them (a few seconds)."""
    from kerasssl.classifier import build_classifier
    from kerasssl.encoders import build_encoder
    from kerasssl.layers.preprocess import Preprocess

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    labels = np.arange(128) % 2
    images = np.stack([fake_image(rng, SIZE, bool(y)) for y in labels])
    model = build_classifier(build_encoder("tiny", (SIZE, SIZE, 1)), Preprocess(), 2,
                             input_shape=(SIZE, SIZE, 1), mode="supervised")
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(images, labels, batch_size=16, epochs=15, verbose=0)
    accuracy = np.mean(np.argmax(model.predict(images, verbose=0), axis=1) == labels)
    assert accuracy >= 0.9, f"the tiny classifier did not learn the fakes (accuracy {accuracy})"
    model.save(path)
    return path


def pool(root, n=120, n_lenses=12, seed=1):
    """An unlabeled flat pool in shuffled order; returns {id: is_lens}."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    is_lens = rng.permutation(np.arange(n) < n_lenses)
    for k, lens in enumerate(is_lens):
        np.save(root / f"pool_{k}.npy", fake_image(rng, SIZE, bool(lens))[..., 0])
    return {f"pool_{k}.npy": bool(lens) for k, lens in enumerate(is_lens)}


def test_neighbours_of_known_lenses_are_enriched_in_lenses(tmp_path, capsys):
    model = trained_classifier(tmp_path / "classifier.keras")
    truth = pool(tmp_path / "pool")
    rng = np.random.default_rng(7)
    (tmp_path / "known").mkdir()
    for q in range(4):  # known lenses from outside the pool
        np.save(tmp_path / "known" / f"lens_{q}.npy", fake_image(rng, SIZE, True)[..., 0])
    code, err = cli(["index", str(model), str(tmp_path / "pool"), "--out", str(tmp_path / "idx")], capsys)
    assert code == 0 and "indexed 120 image(s)" in err and "flat index" in err, err
    queries = [str(tmp_path / "known" / f"lens_{q}.npy") for q in range(4)]
    code, err = cli(["similar", str(tmp_path / "idx"), "--query", *queries, "--k", "10", "--mean",
                     "--out", str(tmp_path / "nn.csv")], capsys)
    assert code == 0, err
    lines = (tmp_path / "nn.csv").read_text().splitlines()
    assert lines[0] == "query,rank,id,similarity" and len(lines) == 1 + 5 * 10
    rows = [line.split(",") for line in lines[1:]]
    assert [r[0] for r in rows[::10]] == queries + ["mean"]
    assert [int(r[1]) for r in rows[:10]] == list(range(1, 11))
    sims = np.array([float(r[3]) for r in rows]).reshape(5, 10)
    assert np.all(np.diff(sims, axis=1) <= 1e-6) and np.all(sims <= 1 + 1e-5)

    found = np.mean([truth[r[2]] for r in rows if r[0] != "mean"])
    base = np.mean(list(truth.values()))
    enrichment = found / base
    print(f"\nlens fraction among the 10 nearest neighbours of 4 known lenses: {found:.2f} "
          f"vs {base:.2f} in the pool: enrichment {enrichment:.1f}x")
    assert enrichment > 1


def test_ivf_and_hnsw_find_what_the_exact_index_finds(exported, tmp_path):
    _, run, _ = exported
    truth = pool(tmp_path / "pool", n=100, n_lenses=20, seed=3)
    queries = [str(tmp_path / "pool" / name) for name in sorted(truth)[:3]]
    found = {}
    for kind in ("flat", "ivf", "hnsw"):
        info = build_index(run / "classifier.keras", [tmp_path / "pool"], tmp_path / kind, kind=kind, progress=False)
        assert info.record["kind"] == kind and info.n == 100
        found[kind] = similar(tmp_path / kind, queries, k=5)
    assert load_index(tmp_path / "ivf")[0].record["params"]["nlist"] == ivf_lists(100) == 2
    assert [r[:3] for r in found["ivf"]] == [r[:3] for r in found["flat"]]  # nprobe = nlist: exact
    assert [r[2] for r in found["hnsw"] if r[1] == 1] == [r[2] for r in found["flat"] if r[1] == 1]
    # each query is in the pool: it finds itself first
    assert [r[2] for r in found["flat"] if r[1] == 1] == [q.rsplit("/", 1)[1] for q in queries]
    assert choose_kind(10**6) == "flat" and choose_kind(10**6 + 1) == "ivf" and choose_kind(5, "hnsw") == "hnsw"
    assert ivf_lists(10**8) == 40000


def test_the_index_records_the_model_and_its_fingerprint(exported, tmp_path):
    _, run, version_dir = exported
    survey = write_hst_folder(tmp_path / "s", 3, 3, size=SIZE, seed=2)
    info = build_index(run / "classifier.keras", [survey], tmp_path / "idx", progress=False)
    record = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert record["model"] == str((run / "classifier.keras").resolve())
    assert record["model_fingerprint"] == hashlib.sha256((run / "classifier.keras").read_bytes()).hexdigest()
    assert (record["n"], record["dim"], record["kind"]) == (6, 6, "flat") and record["created"]
    ids = (tmp_path / "idx" / "ids.txt").read_text().splitlines()
    assert sorted(ids) == sorted(p.name for p in survey.glob("*.npy"))
    # The SavedModel's embed and an encoder.keras with the run's preprocess.json give the same features.
    from kerasssl.classifier import classifier_parts
    from kerasssl.layers.preprocess import preprocess_to_json
    from kerasssl.models import load_model

    parts = classifier_parts(load_model(run / "classifier.keras"))
    (tmp_path / "enc").mkdir()
    parts.encoder.save(tmp_path / "enc" / "encoder.keras")
    preprocess_to_json(parts.preprocess, tmp_path / "enc" / "preprocess.json")
    query = [str(survey / ids[0])]
    want = similar(info.path, query, k=6)
    for model in (version_dir.parent, tmp_path / "enc" / "encoder.keras"):
        other = build_index(model, [survey], tmp_path / "idx2", progress=False)
        assert other.record["model_fingerprint"] != record["model_fingerprint"]
        got = similar(other.path, query, k=6)
        assert [r[2] for r in got] == [r[2] for r in want], model
        np.testing.assert_allclose([r[3] for r in got], [r[3] for r in want], atol=1e-5)
        assert (tmp_path / "idx2" / "index.json").is_file()  # an earlier index is replaced


def test_similar_refuses_an_index_built_by_another_model(tmp_path, capsys):
    make_classifier(seed=0).save(tmp_path / "a.keras")
    make_classifier(seed=1).save(tmp_path / "b.keras")
    survey = write_hst_folder(tmp_path / "s", 2, 2, size=SIZE)
    build_index(tmp_path / "a.keras", [survey], tmp_path / "idx", progress=False)
    query = str(survey / "0_hst.npy")
    args = ["similar", str(tmp_path / "idx"), "--query", query, "--k", "3", "--out", str(tmp_path / "nn.csv")]
    code, err = cli(args + ["--model", str(tmp_path / "b.keras")], capsys)
    assert code == 2 and err.startswith("kerasssl: error:") and "\n" not in err, err
    assert "b.keras" in err and "is not the model" in err and not (tmp_path / "nn.csv").exists()
    (tmp_path / "a_folder").mkdir()
    code, err = cli(args[:-1] + [str(tmp_path / "a_folder")], capsys)
    assert code == 2 and "a_folder" in err and "is a directory" in err and "\n" not in err, err
    assert not any((tmp_path / "a_folder").iterdir()) and not list(tmp_path.glob("*tmp*"))
    code, err = cli(args + ["--model", str(tmp_path / "a.keras")], capsys)
    assert code == 0 and len((tmp_path / "nn.csv").read_text().splitlines()) == 4, err
    shutil.copy(tmp_path / "b.keras", tmp_path / "a.keras")  # the recorded model file was replaced
    code, err = cli(args, capsys)
    assert code == 2 and "has changed since it built the index" in err, err


def test_a_bad_file_stops_the_index_with_nothing_left_or_is_skipped(tmp_path, capsys):
    make_classifier().save(tmp_path / "m.keras")
    survey = write_hst_folder(tmp_path / "s", 2, 2, size=SIZE)
    (survey / "broken.npy").write_bytes(b"")
    code, err = cli(["index", str(tmp_path / "m.keras"), str(survey), "--out", str(tmp_path / "idx")], capsys)
    assert code == 2 and "broken.npy" in err and "empty file" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras", "s"]  # no index, no temp folder
    code, err = cli(["index", str(tmp_path / "m.keras"), str(survey), "--out", str(tmp_path / "idx"), "--skip-bad"],
                    capsys)
    assert code == 0 and "skipped 1" in err, err
    assert load_index(tmp_path / "idx")[0].n == 4
    assert (tmp_path / "idx" / "skipped.txt").read_text().startswith("broken.npy\t")
    with pytest.raises(DataError, match="not a kerasssl index"):
        build_index(tmp_path / "m.keras", [survey], survey)
