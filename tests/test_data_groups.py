"""Group-aware splits (data.group_by / data.groups): an object's cutouts stay on one side."""

import hashlib
import json
import re

import numpy as np
import pytest
from conftest import run_cli

from kerasssl.config import DataConfig, RunConfig
from kerasssl.data.groups import Grouping
from kerasssl.data.load import ImageSet
from kerasssl.data.split import Split, load_or_create_split, make_split
from kerasssl.errors import DataError, KerassslError

ID = r"^(?:lens|nl)_(\d+)_"


def stamps(n_objects=120, seed=0):
    """Cutouts of objects whose ids are shared across classes: lenses/lens_7_a.npy and nonlenses/nl_7_b.npy.

    Each object has 0-2 lens stamps and 0-3 non-lens stamps (at least one stamp), so
    many groups hold both classes and the groups differ in size.
    """
    rng = np.random.default_rng(seed)
    files, labels = [], []
    for obj in range(n_objects):
        n_lens, n_non = int(rng.integers(0, 3)), int(rng.integers(0, 4))
        if n_lens + n_non == 0:
            n_lens = 1
        files += [f"lenses/lens_{obj}_{'abc'[j]}.npy" for j in range(n_lens)]
        files += [f"nonlenses/nl_{obj}_{'bcde'[j]}.npy" for j in range(n_non)]
        labels += [1] * n_lens + [0] * n_non
    return image_set(files, labels)


def image_set(files, labels, class_names=("nonlens", "lens")):
    images = np.zeros((len(files), 2, 2, 1), np.float32)
    return ImageSet(images=images, labels=np.array(labels, np.int64), class_names=list(class_names),
                    files=files, format="folders", root="/data")


def object_of(f):
    return re.search(ID, f.rsplit("/", 1)[-1]).group(1)


def parts_of_objects(split):
    seen = {}
    for name in ("train", "val", "test"):
        for f in getattr(split, name):
            seen.setdefault(object_of(f), set()).add(name)
    return seen


def by_class(data, files):
    label = dict(zip(data.files, data.labels))
    return np.bincount([label[f] for f in files], minlength=2)


def test_group_by_keeps_each_object_on_one_side_stratified_and_seeded(tmp_path):
    data = stamps()
    grouping = Grouping(group_by=ID)
    split = make_split(data, 0.15, 0.15, labels_fraction=0.25, seed=0, grouping=grouping)
    parts = split.train + split.val + split.test
    assert sorted(parts) == sorted(data.files) and len(set(parts)) == len(parts)
    where = parts_of_objects(split)
    assert all(len(p) == 1 for p in where.values()), "an object is in two parts"
    # Mixed objects exist (the test would be empty otherwise) and each stayed whole.
    mixed = [o for o in where
             if any(f"lens_{o}_" in f for f in data.files) and any(f"nl_{o}_" in f for f in data.files)]
    assert len(mixed) > 20
    # Both classes in every part, per-class fractions close to the targets.
    totals = by_class(data, data.files)
    for name, fraction in (("val", 0.15), ("test", 0.15), ("train", 0.7)):
        counts = by_class(data, getattr(split, name))
        assert counts.min() >= 1
        np.testing.assert_allclose(counts / totals, fraction, atol=0.03)
    # Labelled: per file, inside train only (nested with the fraction as before).
    assert set(split.labeled) <= set(split.train) and by_class(data, split.labeled).min() >= 1
    smaller = split.with_labels_fraction(data, 0.1)
    assert set(smaller.labeled) < set(split.labeled) and smaller.test == split.test
    assert smaller.grouping == split.grouping and smaller.group_counts == split.group_counts
    # Deterministic for a seed; another seed holds out other objects.
    assert make_split(data, 0.15, 0.15, 0.25, seed=0, grouping=grouping) == split
    shuffled = data.subset(np.random.default_rng(1).permutation(len(data)))
    assert set(make_split(shuffled, 0.15, 0.15, 0.25, seed=0, grouping=grouping).test) == set(split.test)
    assert make_split(data, 0.15, 0.15, 0.25, seed=1, grouping=grouping).test != split.test
    # Recorded: the rule and the groups per part, and read back the same.
    assert split.grouping == {"group_by": ID, "matched_on": "base name"}
    assert sum(split.group_counts.values()) == len(where)
    assert split.group_counts["test"] == len({object_of(f) for f in split.test})
    split.save(tmp_path / "split.json")
    raw = json.loads((tmp_path / "split.json").read_text())
    assert raw["grouping"] == split.grouping and raw["group_counts"] == split.group_counts
    assert Split.load(tmp_path / "split.json") == split


def test_per_file_split_is_unchanged_and_records_no_grouping(tmp_path):
    data = stamps(40)
    plain = make_split(data, 0.15, 0.15, 0.5, seed=3)
    assert plain == make_split(data, 0.15, 0.15, 0.5, seed=3, grouping=None)
    assert plain.grouping is None and plain.group_counts is None
    # The grouped split differs on this data: the per-file one splits objects.
    assert any(len(p) > 1 for p in parts_of_objects(plain).values())
    assert DataConfig().group_by is None and DataConfig().groups is None
    run = tmp_path / "run"
    load_or_create_split(run, data, DataConfig(seed=3), labels_fraction=0.5)
    raw = json.loads((run / "split.json").read_text())
    assert list(raw) == ["seed", "val_fraction", "test_fraction", "labels_fraction", "class_names", "counts",
                         "train", "val", "test", "labeled", "unlabeled"]
    assert raw == plain.to_dict()


def write_groups_csv(path, data, group_of):
    lines = ["file,group"] + [f"{f},{group_of(f)}" for f in data.files]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_groups_csv_keeps_groups_whole_and_records_its_hash(tmp_path):
    data = stamps(90)
    # Coarser objects than the file names say: ids 0-89 in 30 groups.
    csv_path = write_groups_csv(tmp_path / "groups.csv", data, lambda f: f"field{int(object_of(f)) % 30}")
    grouping = Grouping.from_config(DataConfig(groups=str(csv_path)))
    split = make_split(data, 0.2, 0.2, 1.0, seed=0, grouping=grouping)
    group_of = {f: f"field{int(object_of(f)) % 30}" for f in data.files}
    homes = {}
    for name in ("train", "val", "test"):
        for f in getattr(split, name):
            homes.setdefault(group_of[f], set()).add(name)
    assert all(len(h) == 1 for h in homes.values()) and len(homes) == 30
    for name in ("train", "val", "test"):
        assert by_class(data, getattr(split, name)).min() >= 1
    assert split.grouping == {"groups": str(csv_path),
                              "sha256": hashlib.sha256(csv_path.read_bytes()).hexdigest()}
    assert sum(split.group_counts.values()) == 30


@pytest.mark.parametrize("value, message", [
    ("(", r"^data\.group_by \(--group-by\) is not a valid regular expression \(.*\): '\('$"),
    (r"^nl_\d+_", r"needs a group \(\.\.\.\) around the object id"),
    ("", "must be a regular expression or null"),
])
def test_bad_group_by_is_one_line_naming_the_key(value, message):
    with pytest.raises(KerassslError, match=message) as info:
        DataConfig(group_by=value)
    assert "\n" not in str(info.value)
    with pytest.raises(KerassslError, match="cfg.yaml: data.group_by"):
        RunConfig.from_dict({"data": {"group_by": value}}, source="cfg.yaml")


def test_group_by_and_groups_together_are_refused():
    with pytest.raises(KerassslError, match="both given"):
        DataConfig(group_by=ID, groups="g.csv")
    with pytest.raises(KerassslError, match="must be a CSV file path"):
        DataConfig(groups=3)


def test_a_file_the_regex_does_not_match_is_named():
    data = image_set(["lenses/lens_1_a.npy", "nonlenses/odd.npy"], [1, 0])
    with pytest.raises(DataError, match=r"^/data/nonlenses/odd\.npy: data\.group_by .* does not match"):
        make_split(data, 0.0, 0.0, 1.0, grouping=Grouping(group_by=ID))
    data = image_set(["lenses/lens_1_a.npy", "nonlenses/nl__b.npy"], [1, 0])
    with pytest.raises(DataError, match=r"nl__b\.npy: .*empty first group"):
        make_split(data, 0.0, 0.0, 1.0, grouping=Grouping(group_by=r"_(\d*)_"))


@pytest.mark.parametrize("content, message", [
    (None, "groups CSV not found"),
    ("path,object\nlenses/lens_0_a.npy,1\n", r"needs a header row with columns file,group, got path,object"),
    ("file,group\n", "has a header but no rows"),
    ("file,group\nlenses/lens_0_a.npy\n", "line 2: expected columns file,group"),
    ("file,group\nlenses/lens_0_a.npy,\n", "line 2: empty group"),
    ("file,group\nlenses/lens_0_a.npy,1\nlenses/lens_0_a.npy,2\n", r"line 3: lenses/lens_0_a\.npy is listed twice"),
    ("DATA", r"has no row for 1 file\(s\) of /data \(e\.g\. nonlenses/nl_3_b\.npy\)"),
    ("DATA+", r"names 1 file\(s\) absent from /data \(e\.g\. lenses/ghost\.npy\)"),
])
def test_bad_groups_csv_is_one_line_naming_it(tmp_path, content, message):
    data = image_set([f"lenses/lens_{i}_a.npy" for i in range(4)] + [f"nonlenses/nl_{i}_b.npy" for i in range(4)],
                     [1] * 4 + [0] * 4)
    path = tmp_path / "groups.csv"
    if content == "DATA":  # one data file left out
        content = "file,group\n" + "".join(f"{f},{object_of(f)}\n" for f in data.files if f != "nonlenses/nl_3_b.npy")
    elif content == "DATA+":  # one row too many
        content = "file,group\n" + "".join(f"{f},{object_of(f)}\n" for f in data.files) + "lenses/ghost.npy,9\n"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: {message}") as info:
        make_split(data, 0.25, 0.25, 1.0, grouping=Grouping.from_config(DataConfig(groups=str(path))))
    assert "\n" not in str(info.value)


def test_mixed_groups_stay_whole_and_too_few_groups_are_refused():
    # Object 0 holds most lenses and non-lenses: it must still go to one part.
    files = [f"lenses/lens_0_{i}.npy" for i in range(6)] + [f"nonlenses/nl_0_{i}.npy" for i in range(6)]
    files += [f"lenses/lens_{o}_a.npy" for o in (1, 2, 3)] + [f"nonlenses/nl_{o}_b.npy" for o in (1, 2, 3)]
    data = image_set(files, [1] * 6 + [0] * 6 + [1] * 3 + [0] * 3)
    split = make_split(data, 0.2, 0.2, 1.0, seed=0, grouping=Grouping(group_by=ID))
    assert all(len(p) == 1 for p in parts_of_objects(split).values())
    assert parts_of_objects(split)["0"] == {"train"}
    for name in ("train", "val", "test"):
        assert by_class(data, getattr(split, name)).min() >= 1
    # Every lens in two objects: no lens left for a third part.
    files = [f"lenses/lens_{o}_{i}.npy" for o in (1, 2) for i in range(3)]
    files += [f"nonlenses/nl_{o}_b.npy" for o in range(6)]
    data = image_set(files, [1] * 6 + [0] * 6)
    with pytest.raises(DataError, match=r"^/data: data\.group_by .* puts class 'lens' in too few groups "
                                        r"\(groups per class: nonlens 6, lens 2\); each class needs at least 3"):
        make_split(data, 0.2, 0.2, 1.0, grouping=Grouping(group_by=ID))
    # Three lens objects, but every non-lens is a stamp of object 1.
    files = ["lenses/lens_1_a.npy", "lenses/lens_2_a.npy", "lenses/lens_3_a.npy",
             "nonlenses/nl_1_b.npy", "nonlenses/nl_1_c.npy", "nonlenses/nl_1_d.npy"]
    data = image_set(files, [1, 1, 1, 0, 0, 0])
    with pytest.raises(DataError, match="puts class 'nonlens' in too few groups"):
        make_split(data, 0.2, 0.2, 1.0, grouping=Grouping(group_by=ID))


def test_classes_locked_together_in_groups_are_refused_after_assignment():
    # Three classes, each in 3 groups, objects 1-5 = {a,b}, {a,b}, {a,c}, {b,c}, {c}: no 3 parts
    # each hold all three classes (checked by hand: every pairing leaves one part short).
    layout = {1: "ab", 2: "ab", 3: "ac", 4: "bc", 5: "c"}
    files = [f"{k}/{k}_{o}_x.npy" for o, ks in layout.items() for k in ks]
    labels = ["abc".index(f[0]) for f in files]
    data = image_set(files, labels, class_names="abc")
    with pytest.raises(DataError,
                       match=r"^/data: data\.group_by .* leaves no group of class '\w' for (train|val|test)"):
        make_split(data, 0.2, 0.2, 1.0, seed=0, grouping=Grouping(group_by=r"^\w_(\d+)_"))
    # One more object holding all three: now 3 parts can, and the repair finds them.
    data = image_set(files + ["a/a_6_x.npy", "b/b_6_x.npy", "c/c_6_x.npy"], labels + [0, 1, 2], class_names="abc")
    split = make_split(data, 0.2, 0.2, 1.0, seed=0, grouping=Grouping(group_by=r"^\w_(\d+)_"))
    for name in ("train", "val", "test"):
        assert np.bincount([int("abc".index(f[0])) for f in getattr(split, name)], minlength=3).min() >= 1
    owners = {}
    for name in ("train", "val", "test"):
        for f in getattr(split, name):
            owners.setdefault(f.split("_")[1], set()).add(name)
    assert all(len(p) == 1 for p in owners.values())


def test_recorded_split_refuses_a_changed_grouping(tmp_path):
    data = stamps(60)
    run = tmp_path / "run"
    grouped = DataConfig(group_by=ID)
    first = load_or_create_split(run, data, grouped, labels_fraction=1.0)
    assert load_or_create_split(run, data, DataConfig(group_by=ID), labels_fraction=0.5).test == first.test
    for other, message in [(DataConfig(group_by=r"^(?:lens|nl)_(\d)"),
                            r"made with data\.group_by .*asks for data\.group_by"),
                           (DataConfig(), "asks for no grouping")]:
        with pytest.raises(KerassslError, match=message):
            load_or_create_split(run, data, other)
    # A per-file run refuses a grouping asked for later.
    plain = tmp_path / "plain"
    load_or_create_split(plain, data, DataConfig())
    with pytest.raises(KerassslError, match=r"made with no grouping \(one file per group\), the config asks for"):
        load_or_create_split(plain, data, grouped)
    # A CSV: the same content elsewhere is the same rule; changed content is not.
    csv_path = write_groups_csv(tmp_path / "g.csv", data, object_of)
    by_csv = tmp_path / "csv"
    load_or_create_split(by_csv, data, DataConfig(groups=str(csv_path)))
    copy = tmp_path / "copy.csv"
    copy.write_bytes(csv_path.read_bytes())
    load_or_create_split(by_csv, data, DataConfig(groups=str(copy)))
    write_groups_csv(csv_path, data, lambda f: str(int(object_of(f)) % 7))
    with pytest.raises(KerassslError, match=r"made with data\.groups .*g\.csv \(sha256 [0-9a-f]{12}\)"):
        load_or_create_split(by_csv, data, DataConfig(groups=str(csv_path)))


def test_tfrecord_data_is_grouped_by_its_recorded_filenames(tmp_path):
    from kerasssl.data import tfrecord
    from kerasssl.data.load import load_images

    folder = tmp_path / "data"
    rng = np.random.default_rng(0)
    for cls, stem, tag in (("lenses", "lens", "a"), ("nonlenses", "nl", "b")):
        (folder / cls).mkdir(parents=True)
        for o in range(8):
            np.save(folder / cls / f"{stem}_{o}_{tag}.npy", rng.normal(size=(8, 8)).astype(np.float32))
    out = tmp_path / "rec"
    tfrecord.write_tfrecords(folder, out, shards=2, progress=False)
    from_folder, from_records = load_images(folder), load_images(out)
    assert sorted(from_folder.files) == sorted(from_records.files)
    grouping = Grouping(group_by=ID)
    a = make_split(from_folder, 0.2, 0.2, 1.0, seed=0, grouping=grouping)
    b = make_split(from_records, 0.2, 0.2, 1.0, seed=0, grouping=grouping)
    assert (set(a.train), set(a.val), set(a.test)) == (set(b.train), set(b.val), set(b.test))
    assert all(len(p) == 1 for p in parts_of_objects(b).values())


def write_hst_stamps(root, n_objects=10, size=16):
    """A flat DeepLense-style folder where object i has a lens stamp i_a_hst.npy and a non-lens nl_i_b_hst.npy."""
    from conftest import fake_image

    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(n_objects):
        np.save(root / f"{i}_a_hst.npy", fake_image(rng, size, True)[..., 0])
        np.save(root / f"nl_{i}_b_hst.npy", fake_image(rng, size, False)[..., 0])
    return root


HST_ID = r"^(?:nl_)?(\d+)_"


def test_pretrain_cli_writes_the_grouped_split_and_refuses_a_new_rule_on_resume(tmp_path, capsys):
    data = write_hst_stamps(tmp_path / "hst")
    run = tmp_path / "run"
    argv = ["pretrain", data, "--run-dir", run, "--encoder", "tiny", "--method", "simclr", "--epochs", "1",
            "--batch-size", "4", "--steps-per-epoch", "1", "--group-by", HST_ID]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert RunConfig.load(run / "config.yaml").data.group_by == HST_ID
    raw = json.loads((run / "split.json").read_text())
    assert raw["grouping"]["group_by"] == HST_ID and sum(raw["group_counts"].values()) == 10
    ids = {name: {re.match(HST_ID, f).group(1) for f in raw[name]} for name in ("train", "val", "test")}
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    # --resume keeps the saved rule: a grouping flag is refused like any other.
    code, _, err = run_cli(["pretrain", data, "--run-dir", run, "--resume", "--group-by", r"(\d+)"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--group-by" in err
    # finetune with another rule than the run's recorded one: refused, nothing written.
    code, _, err = run_cli(["finetune", run, data, "--group-by", r"_(\w)_hst", "--epochs", "1"], capsys)
    assert code == 2 and err.count("\n") == 1 and "the run's split was made with data.group_by" in err
    assert not (run / "classifier.keras").exists()


@pytest.mark.parametrize("extra, message", [
    (["--group-by", "("], "data.group_by (--group-by) is not a valid regular expression"),
    (["--group-by", r"\d+_"], "needs a group"),
    (["--groups", "MISSING"], "groups CSV not found"),
    (["--group-by", HST_ID, "--groups", "g.csv"], "both given"),
])
def test_fit_cli_bad_grouping_is_one_line_exit_2_nothing_written(tmp_path, capsys, extra, message):
    data = write_hst_stamps(tmp_path / "hst", n_objects=4)
    run = tmp_path / "run"
    extra = [str(tmp_path / "missing.csv") if e == "MISSING" else e for e in extra]
    code, _, err = run_cli(["fit", data, "--run-dir", run, "--encoder", "tiny", "--epochs", "1", *extra], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not run.exists()


@pytest.mark.parametrize("command", ["pretrain", "finetune", "fit"])
def test_splitting_commands_offer_the_grouping_options(command, capsys):
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0 and "--group-by REGEX" in out and "--groups CSV" in out and "data.group_by" in out


def test_inspect_counts_the_groups_a_split_keeps_whole(tmp_path, capsys):
    data = write_hst_stamps(tmp_path / "hst", n_objects=5)
    np.save(data / "nl_9_b_hst.npy", np.zeros((16, 16), np.float32))  # an object with a non-lens only
    code, out, err = run_cli(["inspect", data, "--json", "--group-by", HST_ID], capsys)
    assert code == 0, err
    groups = json.loads(out)["groups"]
    assert groups == {"rule": {"group_by": HST_ID, "matched_on": "base name"}, "n_groups": 6,
                      "groups_per_class": {"nonlens": 6, "lens": 5}, "mixed_groups": 5, "largest_group": 2}
    code, out, _ = run_cli(["inspect", data, "--group-by", HST_ID], capsys)
    assert code == 0 and "groups   6 (per class: nonlens 6, lens 5); 5 hold several classes" in out
    code, _, err = run_cli(["inspect", data, "--group-by", r"^(\d+)_"], capsys)
    assert code == 2 and err.count("\n") == 1 and "nl_0_b_hst.npy: data.group_by '^(\\\\d+)_' does not match" in err
