"""check_data_path: the one check every DATA argument goes through (folder, shard(s), glob)."""

import subprocess
import sys

import numpy as np
import pytest

from kerasssl.data.load import check_data_path
from kerasssl.errors import DataError


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from conftest import write_hst_folder
    from kerasssl.data.tfrecord import write_tfrecords

    root = tmp_path_factory.mktemp("forms")
    data = write_hst_folder(root / "hst", 4, 4, size=16)
    write_tfrecords(data, root / "rec", shards=2, progress=False)
    return data, root / "rec"


def test_every_form_of_data_is_accepted(shards):
    data, rec = shards
    assert check_data_path(data) == "folder"
    assert check_data_path(str(data)) == "folder"
    for form in (f"{rec}/*.tfrecord*", rec, rec / "data-00000-of-00002.tfrecord"):
        assert check_data_path(form) == "tfrecord", form


@pytest.mark.parametrize("name, problem", [
    ("missing", "no such file or folder"),
    ("missing/*.tfrecord*", "no TFRecord files match"),
    ("one.npy", "is a file"),
    ("empty", "no images"),
])
def test_unusable_data_is_one_data_error(tmp_path, name, problem):
    np.save(tmp_path / "one.npy", np.zeros((8, 8), np.float32))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=problem) as err:
        check_data_path(tmp_path / name)
    assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)


COMMANDS = [
    ["pretrain", "{data}", "--run-dir", "{run}"],
    ["fit", "{data}", "--run-dir", "{run}"],
    ["finetune", "{run}", "{data}", "--mode", "supervised"],
    ["evaluate", "{model}", "{data}", "--run-dir", "{run}"],
    ["inspect", "{data}"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: a[0])
def test_every_command_gives_the_same_answer_for_an_empty_glob(tmp_path, argv):
    # One shared check: the same line whichever command takes DATA.
    pattern = str(tmp_path / "rec" / "*.tfrecord*")
    (tmp_path / "model.keras").write_bytes(b"")
    if argv[0] == "evaluate":  # evaluate reads the run's split first
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "split.json").write_text("{}")
    args = [a.format(data=pattern, run=tmp_path / "run", model=tmp_path / "model.keras") for a in argv]
    proc = subprocess.run([sys.executable, "-m", "kerasssl", *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kerasssl")]
    assert errors == [f"kerasssl: error: {pattern}: no TFRecord files match"]
    assert argv[0] == "evaluate" or not (tmp_path / "run").exists()
