"""kerasssl.data.split: stratified hash split, label fractions, run-dir record."""

import hashlib
import json
import logging

import numpy as np
import pytest

from kerasssl.config import DataConfig
from kerasssl.data.load import ImageSet
from kerasssl.config import EVALUATE_SPLITS as EVALUATION_SPLITS
from kerasssl.data.split import SPLIT_NAMES, Split, load_or_create_split, make_split
from kerasssl.errors import DataError, KerassslError


def fake_set(counts, prefix=""):
    """An ImageSet with tiny images and the given class sizes (pixels are irrelevant here)."""
    files, labels = [], []
    for k, n in enumerate(counts):
        files += [f"{prefix}c{k}/img_{i}.npy" for i in range(n)]
        labels += [k] * n
    n = len(files)
    images = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 2, 1), np.float32)
    return ImageSet(images=images, labels=np.array(labels, np.int64),
                    class_names=[f"class{k}" for k in range(len(counts))], files=files,
                    format="folders", root="/data")


def by_class(image_set, files):
    label = dict(zip(image_set.files, image_set.labels))
    return np.bincount([label[f] for f in files], minlength=len(image_set.class_names))


def test_stratified_partition_with_hash_order():
    data = fake_set([63, 152])
    split = make_split(data, val_fraction=0.15, test_fraction=0.15, labels_fraction=0.1, seed=3)
    parts = split.train + split.val + split.test
    assert sorted(parts) == sorted(data.files) and len(set(parts)) == len(parts)
    assert by_class(data, split.test).tolist() == [round(63 * 0.15), round(152 * 0.15)]
    assert by_class(data, split.val).tolist() == [round(63 * 0.15), round(152 * 0.15)]
    # The test set is exactly the first files of each class in sha256("seed:relpath") order.
    for k in range(2):
        members = [f for f, lab in zip(data.files, data.labels) if lab == k]
        ranked = sorted(members, key=lambda f: hashlib.sha256(f"3:{f}".encode()).hexdigest())
        n_test = round(len(members) * 0.15)
        assert set(ranked[:n_test]) == set(f for f in split.test if f in members)
    # labeled = first 10 % (at least 1) of each class's train files, in hash order.
    train_counts = by_class(data, split.train)
    assert by_class(data, split.labeled).tolist() == [max(1, round(n * 0.1)) for n in train_counts]
    assert set(split.labeled) | set(split.unlabeled) == set(split.train)
    assert not set(split.labeled) & set(split.unlabeled)
    assert split.counts["test"] == {"class0": 9, "class1": 23}
    # Lists are in the data's order, whatever the hash order.
    assert split.train == [f for f in data.files if f in set(split.train)]


def test_deterministic_seeded_and_stable_when_files_are_added():
    data = fake_set([40, 60])
    a = make_split(data, 0.2, 0.2, 0.5, seed=0)
    assert make_split(data, 0.2, 0.2, 0.5, seed=0) == a
    assert make_split(data, 0.2, 0.2, 0.5, seed=1).test != a.test
    # Listing order does not matter.
    shuffled = data.subset(np.random.default_rng(0).permutation(len(data)))
    assert set(make_split(shuffled, 0.2, 0.2, 0.5, seed=0).test) == set(a.test)
    # Adding 2 files per class: almost every old file keeps its split.
    bigger = fake_set([42, 62])
    b = make_split(bigger, 0.2, 0.2, 0.5, seed=0)
    moved = sum(f not in getattr(b, name) for name in ("train", "val", "test")
                for f in getattr(a, name))
    assert moved <= 4


def test_labeled_sets_are_nested_and_rederived():
    data = fake_set([30, 50])
    split = make_split(data, 0.15, 0.15, labels_fraction=0.5, seed=7)
    small = split.with_labels_fraction(data, 0.1)
    assert (small.train, small.val, small.test) == (split.train, split.val, split.test)
    assert set(small.labeled) < set(split.labeled)
    assert small.labels_fraction == 0.1
    assert small.labeled == make_split(data, 0.15, 0.15, 0.1, seed=7).labeled
    assert by_class(data, split.with_labels_fraction(data, 1e-6).labeled).tolist() == [1, 1]


def test_tiny_classes_keep_train_and_get_held_out_files():
    data = fake_set([3, 4])
    split = make_split(data, 0.15, 0.15, 1.0, seed=0)
    assert by_class(data, split.test).tolist() == [1, 1]
    assert by_class(data, split.val).tolist() == [1, 1]
    assert by_class(data, split.train).tolist() == [1, 2]
    assert by_class(data, split.labeled).tolist() == [1, 2]
    # Two files are enough when only one part is held out: one test, one train.
    data = fake_set([2, 5])
    split = make_split(data, 0.0, 0.15, 0.1, seed=0)
    assert by_class(data, split.test).tolist() == [1, 1] and split.val == []
    assert by_class(data, split.train).tolist() == [1, 4]
    assert by_class(data, split.labeled).tolist() == [1, 1]


@pytest.mark.parametrize("counts, fractions, message", [
    ([3, 1, 2], (0.15, 0.15),
     r"^/data: classes 'class1', 'class2' have too few images \(images per class: class0 3, "
     r"class1 1, class2 2\); each class needs at least 3 \(1 train, 1 val, 1 test at val "
     r"fraction 0\.15 and test fraction 0\.15\)$"),
    ([9, 1], (0.0, 0.2),
     r"^/data: class 'class1' has too few images .*needs at least 2 \(1 train, 1 test at test "
     r"fraction 0\.2\)$"),
    ([12], (0.15, 0.15), r"^/data: only class 'class0' has images \(images per class: class0 12\)"),
    ([0, 24], (0.15, 0.15), r"^/data: only class 'class1' has images .*class0 0, class1 24.*two"),
])
def test_too_few_classes_or_images_per_class_are_refused_in_one_line(counts, fractions, message):
    data = fake_set(counts)
    with pytest.raises(DataError, match=message) as info:
        make_split(data, *fractions, labels_fraction=0.1, seed=0)
    assert "\n" not in str(info.value)


def test_bad_fractions_are_user_errors():
    data = fake_set([5, 5])
    for kwargs, message in [({"val_fraction": 0.6, "test_fraction": 0.5}, "must be < 1"),
                            ({"labels_fraction": 0.0}, r"labels fraction must be in \(0, 1\]"),
                            ({"val_fraction": -0.1}, "val fraction")]:
        with pytest.raises(KerassslError, match=message):
            make_split(data, **kwargs)


def test_indices_and_json_round_trip(tmp_path):
    data = fake_set([10, 12])
    split = make_split(data, 0.2, 0.2, 0.5, seed=2)
    idx = split.indices(data, "val")
    assert idx.dtype == np.int64
    assert [data.files[i] for i in idx] == split.val
    split.save(tmp_path / "split.json")
    raw = json.loads((tmp_path / "split.json").read_text())
    assert raw["train"] == split.train and raw["seed"] == 2
    assert Split.load(tmp_path / "split.json") == split
    other = fake_set([10, 12], prefix="other/")
    with pytest.raises(KerassslError, match="absent from"):
        split.indices(other, "train")
    (tmp_path / "bad.json").write_text('{"train": []}')
    with pytest.raises(KerassslError, match="not a split file"):
        Split.load(tmp_path / "bad.json")


def test_load_or_create_split_records_reuses_and_refuses(tmp_path, caplog):
    data = fake_set([20, 30])
    cfg = DataConfig(val_fraction=0.1, test_fraction=0.2, seed=5)
    run = tmp_path / "run"
    first = load_or_create_split(run, data, cfg, labels_fraction=1.0)
    assert (run / "split.json").exists()
    assert first == make_split(data, 0.1, 0.2, 1.0, seed=5)
    # A changed config does not move files between splits of an existing run.
    with caplog.at_level(logging.WARNING, logger="kerasssl.data.split"):
        again = load_or_create_split(run, data, DataConfig(seed=9), labels_fraction=1.0)
    assert again == first and "keeping the run's recorded split" in caplog.text
    # A new label fraction re-derives labeled from the same train list, and is recorded.
    tenth = load_or_create_split(run, data, cfg, labels_fraction=0.1)
    assert tenth.train == first.train and set(tenth.labeled) < set(first.labeled)
    assert Split.load(run / "split.json").labeled == tenth.labeled
    # A stage that does not choose a fraction (pretraining) keeps the recorded one.
    assert load_or_create_split(run, data, cfg) == tenth
    with pytest.raises(KerassslError, match="absent from"):
        load_or_create_split(run, fake_set([20, 30], prefix="x/"), cfg)


def test_evaluation_splits_are_the_recorded_ones_and_all_defined_once():
    assert set(EVALUATION_SPLITS) == set(SPLIT_NAMES) | {"all"}
    assert EVALUATION_SPLITS[:2] == ("test", "val")  # held-out first: the CLI lists them so
    from kerasssl import evaluate

    assert not hasattr(evaluate, "SPLIT_NAMES")  # evaluate keeps no list of its own (kerasssl.config has it)
