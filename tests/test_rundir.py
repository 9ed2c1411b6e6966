"""kerasssl.rundir: the run directory's one owner (paths, atomic writes, readers, the run's record)."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from kerasssl import rundir
from kerasssl.config import RunConfig
from kerasssl.errors import KerassslError
from kerasssl.rundir import RunDir, read_json, replacing, save_keras_atomic, write_json_atomic, write_text_atomic

PACKAGE = Path(rundir.__file__).parent
RUN_FILES = {rundir.CONFIG, rundir.RECORD, rundir.SPLIT, rundir.PREPROCESS, rundir.HISTORY, rundir.ENCODER,
             rundir.CLASSIFIER, rundir.FINETUNE, rundir.REPORT, rundir.ROC_PLOT}


def test_paths_are_the_run_folder_and_the_module_names(tmp_path):
    run = RunDir(tmp_path / "run")
    expected = {"config": rundir.CONFIG, "record": rundir.RECORD, "split": rundir.SPLIT,
                "preprocess": rundir.PREPROCESS, "history": rundir.HISTORY, "checkpoints": rundir.CHECKPOINTS,
                "tensorboard": rundir.TENSORBOARD, "encoder": rundir.ENCODER, "classifier": rundir.CLASSIFIER,
                "finetune_record": rundir.FINETUNE, "report": rundir.REPORT, "roc_plot": rundir.ROC_PLOT,
                "saved_models": rundir.SAVED_MODELS}
    for prop, name in expected.items():
        assert getattr(run, prop) == tmp_path / "run" / name, prop
    assert run.encoder == tmp_path / "run" / "encoder.keras"  # the documented layout itself
    assert RunDir(run) == run and str(run) == str(tmp_path / "run") and Path(run) == run.path
    assert not run.path.exists()  # naming paths creates nothing
    assert not run.is_run() and not run.has_checkpoints()
    assert RunDir.of_file(run.classifier) is None  # not a run yet
    run.write_json(run.split, {"train": []})
    assert run.is_run() and RunDir.of_file(run.classifier) == RunDir(run.path.resolve())
    run.checkpoints.mkdir()
    assert not run.has_checkpoints()
    (run.checkpoints / "latest.json").write_text("{}")
    assert run.has_checkpoints()


def test_no_module_but_rundir_spells_a_run_file_name():
    # One owner: every other module asks RunDir (docstrings may still name the files).
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == Path(rundir.__file__):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in RUN_FILES and id(node) not in docstrings:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.value!r}")
    assert not offenders, offenders


def _listing(folder):
    return sorted(p.name for p in Path(folder).iterdir())


def test_atomic_writes_leave_only_the_file(tmp_path):
    path = write_json_atomic(tmp_path / "a" / "h.json", {"x": np.float32(1.5), "n": np.arange(3), "p": tmp_path})
    assert path == tmp_path / "a" / "h.json"
    assert json.loads(path.read_text()) == {"x": 1.5, "n": [0, 1, 2], "p": str(tmp_path)}
    write_text_atomic(tmp_path / "a" / "t.yaml", "a: 1\n")
    assert _listing(tmp_path / "a") == ["h.json", "t.yaml"]  # no temporary file left
    RunConfig().save(tmp_path / "a" / "config.yaml")
    assert RunConfig.load(tmp_path / "a" / "config.yaml") == RunConfig()
    assert _listing(tmp_path / "a") == ["config.yaml", "h.json", "t.yaml"]
    assert rundir.tmp_path_for(tmp_path / "m.keras").name == "m.tmp.keras"  # Keras picks the format by suffix


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = write_text_atomic(tmp_path / "f.json", "old")
    with pytest.raises(RuntimeError):
        with replacing(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and _listing(tmp_path) == ["f.json"]
    with pytest.raises(TypeError):
        write_json_atomic(target, {"x": object()})
    assert target.read_text() == "old" and _listing(tmp_path) == ["f.json"]


def test_save_keras_atomic_runs_finish_on_the_temporary_file(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    seen = []
    path = save_keras_atomic(model, tmp_path / "m.keras", finish=lambda tmp: seen.append(tmp))
    assert seen == [tmp_path / "m.tmp.keras"] and _listing(tmp_path) == ["m.keras"]
    assert keras.saving.load_model(path).output_shape == (None, 2)
    before = path.read_bytes()

    def fail(tmp):
        raise OSError("disk full")

    with pytest.raises(OSError):
        save_keras_atomic(keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)]), path, finish=fail)
    assert path.read_bytes() == before and _listing(tmp_path) == ["m.keras"]


def test_read_errors_are_one_line(tmp_path):
    with pytest.raises(KerassslError) as e:
        read_json(tmp_path / "missing.json", "split file")
    assert str(e.value) == f"{tmp_path / 'missing.json'}: split file not found"
    broken = tmp_path / "broken.json"
    broken.write_text('{"train": [')
    with pytest.raises(KerassslError) as e:
        read_json(broken, "split file")
    assert str(e.value).startswith(f"{broken}: not valid JSON (") and "\n" not in str(e.value)
    with pytest.raises(KerassslError, match="cannot read the split file") as e:
        read_json(tmp_path, "split file")  # a folder
    assert "\n" not in str(e.value)
    assert read_json(tmp_path / "missing.json", "x", missing_ok=True) is None
    assert read_json(broken, "x", broken_ok=True) is None
    with pytest.raises(KerassslError, match="not found"):
        read_json(tmp_path / "missing.json", "x", broken_ok=True)  # missing is not "broken"
    bad_yaml = tmp_path / "c.yaml"
    bad_yaml.write_text("data: [\n")
    with pytest.raises(KerassslError) as e:
        RunConfig.load(bad_yaml)
    assert str(e.value) == f"{bad_yaml}: not valid YAML (line 2)"
    assert RunConfig.from_run(tmp_path / "fresh") is None


def test_record_invocation_says_what_a_command_read_and_wrote(tmp_path):
    run = RunDir(tmp_path / "run")
    cfg = RunConfig.from_dict({"pretrain": {"epochs": 3}})
    entry = run.record_invocation(["kerasssl", "pretrain"], command="pretrain", reads={"data": tmp_path / "d"},
                                  writes=[run.encoder], config=cfg)
    assert entry["argv"] == ["kerasssl", "pretrain"] and entry["reads"] == {"data": str(tmp_path / "d")}
    assert entry["writes"] == [str(run.encoder)] and entry["config"] == cfg.to_dict()
    assert {"python", "numpy", "kerasssl"} <= set(entry["versions"])
    with open(run.record, "a") as f:
        f.write('{"time": "cut by a ki')  # a line cut by a kill
    rundir.recorder("evaluate", argv=["kerasssl", "evaluate"], reads={"model": "m.keras", "baseline": None},
                    moved={rundir.REPORT: tmp_path / "elsewhere.json", rundir.ROC_PLOT: None})(run.path)
    entries = run.invocations()
    assert [e.get("command") for e in entries] == ["pretrain", "evaluate"]
    assert entries[1]["reads"] == {"model": "m.keras"}
    assert entries[1]["writes"] == [str(tmp_path / "elsewhere.json"), str(run.roc_plot)]
    assert run.run_id() == f"run@{entries[0]['time']}"
    assert RunDir(tmp_path / "none").run_id() == "none" and RunDir(tmp_path / "none").invocations() == []


def test_finetune_records_and_class_names(tmp_path):
    run = RunDir(tmp_path)
    assert run.finetune_records() == {} and run.class_names() is None
    run.write_json(run.split, {"class_names": ["a", "b"]})
    assert run.class_names() == ["a", "b"]
    run.add_finetune_record({"model": str(run.classifier), "mode": "linear", "class_names": ["x", "y"]})
    run.add_finetune_record({"model": str(tmp_path / "sup.keras"), "mode": "supervised"})
    raw = json.loads(run.finetune_record.read_text())
    assert raw["latest"] == "sup.keras" and set(raw["models"]) == {rundir.CLASSIFIER, "sup.keras"}
    assert run.finetune_records()[rundir.CLASSIFIER]["mode"] == "linear"
    assert run.class_names() == ["a", "b"]  # the latest classifier's record has none: the split's
    run.add_finetune_record({"model": str(run.classifier), "mode": "full", "class_names": ["x", "y"]})
    assert run.class_names() == ["x", "y"]
    run.finetune_record.write_text("{broken")
    with pytest.raises(KerassslError, match="not valid JSON"):
        run.finetune_records()  # a reader is told
    run.add_finetune_record({"model": str(run.classifier), "mode": "full"})  # a writer replaces it
    assert list(run.finetune_records()) == [rundir.CLASSIFIER]


def test_a_relative_run_reads_and_writes_its_own_files(tmp_path, monkeypatch):
    # `--run-dir run` is relative: run.split is "run/split.json", which must not be joined
    # to the run again ("run/run/split.json"): the honesty guard would read no split.
    from kerasssl.evaluate import training_files

    monkeypatch.chdir(tmp_path)
    run = RunDir("run")
    run.write_json(run.split, {"labeled": ["lens_0.npy"], "train": ["lens_1.npy"]})
    run.write_json("history.json", {"loss": [1.0]})  # a bare name is inside the run
    run.add_finetune_record({"model": str(run.classifier), "labeled_files": ["lens_2.npy"]})
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json")) == [
        "run/finetune.json", "run/history.json", "run/split.json"]
    assert run.read_json(run.split, "split file")["labeled"] == ["lens_0.npy"]
    assert list(run.finetune_records()) == [rundir.CLASSIFIER]
    used = training_files("run")
    assert used["finetune"] == {"lens_0.npy", "lens_2.npy"}
    assert used["pretrain"] == {"lens_0.npy", "lens_1.npy"}
