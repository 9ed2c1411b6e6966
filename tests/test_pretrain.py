"""pretrain(): run directory contents, train-split-only data, resume after a crash,
NaN stop with the last good checkpoint kept, checkpoint round trip, kNN probe maths."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from keras import ops

from kerasssl import callbacks as cb
from kerasssl import checkpoints
from kerasssl import pretrain as pt
from kerasssl.config import RunConfig
from kerasssl.errors import KerassslError


def _cfg(**pretrain):
    base = dict(method="simclr", encoder="tiny", epochs=2, batch_size=8, steps_per_epoch=2,
                method_options={"projection_dim": 16, "hidden_dim": 32})
    base.update(pretrain)
    return RunConfig.from_dict({"seed": 0, "data": {"image_size": 32}, "pretrain": base})


def test_pretrain_run_dir_and_resume_after_crash(hst_folder, tmp_path, monkeypatch):
    run = tmp_path / "run"
    seen = {}
    from kerasssl.data import pipeline

    original = pipeline.make_dataset

    def spy(images, *args, **kwargs):
        seen["n"] = len(images)
        return original(images, *args, **kwargs)

    monkeypatch.setattr(pipeline, "make_dataset", spy)

    # A crash while finishing epoch 3 (before its checkpoint): epochs 1-2 survive.
    real_end = cb.LearningRateLogger.on_epoch_end

    def crash_at_epoch_3(self, epoch, logs=None):
        if epoch == 2:
            raise RuntimeError("simulated kill")
        return real_end(self, epoch, logs)

    monkeypatch.setattr(cb.LearningRateLogger, "on_epoch_end", crash_at_epoch_3)
    with pytest.raises(RuntimeError, match="simulated kill"):
        pt.pretrain(_cfg(epochs=3), hst_folder, run, verbose=0)
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["epoch"] == 2
    before = json.loads((run / "history.json").read_text())
    assert len(before["loss"]) == 2 and not (run / "encoder.keras").exists()
    split = json.loads((run / "split.json").read_text())
    assert seen["n"] == len(split["train"])  # train split only
    assert list((run / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert RunConfig.load(run / "config.yaml") == _cfg(epochs=3)
    with pytest.raises(KerassslError, match="already holds"):
        pt.pretrain(_cfg(epochs=3), hst_folder, run, verbose=0)

    monkeypatch.setattr(cb.LearningRateLogger, "on_epoch_end", real_end)
    hist = pt.pretrain(pt.resume_config(run), hst_folder, run, resume=True, verbose=0)
    for name in ("config.yaml", "split.json", "preprocess.json", "history.json", "encoder.keras"):
        assert (run / name).exists(), name
    assert json.loads((run / "history.json").read_text()) == hist
    assert len(hist["loss"]) == 3 and hist["loss"][:2] == before["loss"]  # continued, not restarted
    assert {"loss", "embedding_std", "learning_rate", "val_knn_auc"} <= set(hist)
    assert all(np.isfinite(hist["loss"]))
    encoder = keras.saving.load_model(run / "encoder.keras")
    assert encoder.input_shape == (None, 32, 32, 1)
    with pytest.raises(KerassslError, match="only be raised"):
        pt.resume_config(run, epochs=1)
    # The API refuses other settings on resume (the CLI passes its flags).
    with pytest.raises(KerassslError, match=r"only --epochs may be given \(got --seed, --method\)"):
        pt.resume_config(run, epochs=4, given={"--seed": 1, "--encoder": None, "--method": "byol"})
    assert pt.resume_config(run, epochs=4, given={"--seed": None}).pretrain.epochs == 4
    with pytest.raises(KerassslError, match="already trained 3"):
        pt.pretrain(pt.resume_config(run), hst_folder, run, resume=True, verbose=0)


def test_nan_loss_stops_with_clear_message_and_keeps_last_checkpoint(hst_folder, tmp_path, monkeypatch):
    from kerasssl.methods import SimCLR

    real_loss = SimCLR.method_loss

    def nan_from_step_2(self, out):
        loss = real_loss(self, out)
        return loss + ops.where(self.optimizer.iterations >= 2, float("nan"), 0.0)

    monkeypatch.setattr(SimCLR, "method_loss", nan_from_step_2)
    run = tmp_path / "run"
    with pytest.raises(KerassslError) as err:
        pt.pretrain(_cfg(), hst_folder, run, verbose=0)
    message = str(err.value)
    assert "non-finite loss" in message and "epoch 2" in message
    assert "last good checkpoint: epoch 1" in message and "learning rate" in message
    assert "--learning-rate" not in message  # pretrain has no such option
    assert "\n" not in message
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["epoch"] == 1
    assert len(json.loads((run / "history.json").read_text())["loss"]) == 1
    assert not (run / "encoder.keras").exists()


def test_checkpoint_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    keras.utils.set_random_seed(0)
    model = pt.build_pretraining_model(_cfg(method="byol"), (16, 16, 1), None, steps_per_epoch=2)
    x = np.random.default_rng(0).normal(size=(16, 16, 16, 1)).astype("float32")
    ckpt = checkpoints.EpochCheckpoint(tmp_path / "ck", history={})
    model.run_eagerly = True  # two tiny steps: cheaper than tracing
    model.fit(x, batch_size=8, epochs=1, verbose=0, callbacks=[ckpt])
    fresh = pt.build_pretraining_model(_cfg(method="byol"), (16, 16, 1), None, steps_per_epoch=2)
    meta = checkpoints.restore_checkpoint(fresh, tmp_path / "ck")
    assert meta["epoch"] == 1 and len(meta["history"]["loss"]) == 1
    for a, b in zip(model.variables, fresh.variables):  # incl. seed states and EMA target
        np.testing.assert_array_equal(ops.convert_to_numpy(a.value), ops.convert_to_numpy(b.value))
    for a, b in zip(model.optimizer.variables, fresh.optimizer.variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(a.value), ops.convert_to_numpy(b.value))
    assert int(fresh.optimizer.iterations) == 2
    wrong = pt.build_pretraining_model(_cfg(method="simclr"), (16, 16, 1), None, steps_per_epoch=2)
    with pytest.raises(KerassslError, match="variables"):
        checkpoints.restore_checkpoint(wrong, tmp_path / "ck")


def test_knn_scores_match_bruteforce_vote_and_auc():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(30, 5))
    labels = (train[:, 0] > 0).astype(int)
    query = rng.normal(size=(10, 5))
    scores = cb.knn_scores(train, labels, query, k=7, temperature=0.5)
    tn = train / np.linalg.norm(train, axis=1, keepdims=True)
    for i, q in enumerate(query / np.linalg.norm(query, axis=1, keepdims=True)):
        sim = tn @ q
        top = np.argsort(-sim)[:7]
        w = np.exp(sim[top] / 0.5)
        np.testing.assert_allclose(scores[i, 1], w[labels[top] == 1].sum() / w.sum(), rtol=1e-9)
    # The probe's AUC: kerasssl.metrics.roc_auc over the classes present.
    from kerasssl.metrics import roc_auc

    assert roc_auc((query[:, 0] > 0).astype(int), np.stack([1 - query[:, 0], query[:, 0]], 1),
                   classes="present") == 1.0
    assert np.isnan(roc_auc(np.zeros(10, int), scores, classes="present"))


def test_bad_config_is_one_line_error(hst_folder, tmp_path):
    # A bad value is refused when the config is built (RunConfig validates its sections), a
    # name the registries lack or a method option the method lacks when pretraining starts.
    for options, match in (({"method": "no_such_method"}, "unknown method"), ({"precision": "float8"}, "precision"),
                           ({"epochs": 0}, "epochs"), ({"method_options": {"temp": 1}}, "unknown option")):
        with pytest.raises(KerassslError, match=match):
            pt.pretrain(_cfg(**options), hst_folder, tmp_path / "bad", verbose=0)
    with pytest.raises(KerassslError, match="no checkpoint"):
        pt.pretrain(_cfg(), hst_folder, tmp_path / "none", resume=True, verbose=0)


@pytest.mark.slow  # a real process killed with SIGKILL mid-run, then resumed (~1-2 min)
def test_sigkill_mid_run_then_resume_loses_at_most_one_epoch(hst_folder, tmp_path):
    run = tmp_path / "run"
    cli = [sys.executable, "-m", "kerasssl", "pretrain", str(hst_folder), "--run-dir", str(run),
           "--encoder", "tiny", "--image-size", "32", "--batch-size", "8", "--steps-per-epoch", "2"]
    proc = subprocess.Popen(cli + ["--epochs", "6"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run / "checkpoints" / "latest.json"
    deadline = time.time() + 600
    while time.time() < deadline:
        if latest.exists() and json.loads(latest.read_text())["epoch"] >= 1:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads(latest.read_text())["epoch"]
    assert 1 <= done < 6
    assert len(json.loads((run / "history.json").read_text())["loss"]) in (done, done - 1)
    subprocess.run(cli[:4] + [str(hst_folder), "--run-dir", str(run), "--resume"], check=True, capture_output=True)
    history = json.loads((run / "history.json").read_text())
    assert len(history["loss"]) == 6 and all(np.isfinite(history["loss"]))


@pytest.mark.slow  # ~6 CPU-minutes: runs benchmarks/pretrain_probe.py at the size reported in the issue note
def test_pretrained_encoder_beats_random_init_on_linear_probe(tmp_path):
    # Simulated (lenstronomy-style) three-band data: the conftest fakes are so
    # easy that a random encoder already scores ~0.97, so they cannot show this.
    from conftest import BENCHMARKS

    script = BENCHMARKS / "pretrain_probe.py"
    out = tmp_path / "probe"
    subprocess.run([sys.executable, str(script), "--out", str(out), "--n-lenses", "300", "--n-nonlenses", "300",
                    "--size", "32", "--encoder", "tiny", "--method", "simclr", "--epochs", "15", "--seed", "0"],
                   check=True, capture_output=True)
    result = json.loads((out / "results.json").read_text())
    assert result["linear_probe_test_auc_pretrained"] > result["linear_probe_test_auc_random_init"], result


def _snapshot(folder):
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_skips_a_truncated_checkpoint_with_one_warning(hst_folder, tmp_path, caplog):
    run = tmp_path / "run"
    first = pt.pretrain(_cfg(epochs=2), hst_folder, run, verbose=0)
    ckpt = run / "checkpoints"
    assert sorted(p.name for p in ckpt.glob("*.npz")) == ["ckpt-0001.npz", "ckpt-0002.npz"]  # the last two
    newest = ckpt / "ckpt-0002.npz"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # e.g. the disk filled up

    caplog.set_level("WARNING", logger="kerasssl.checkpoints")
    hist = pt.pretrain(pt.resume_config(run, epochs=3), hst_folder, run, resume=True, verbose=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("kerasssl")]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert "ckpt-0002.npz is truncated or corrupt" in warnings[0]
    assert "resuming from ckpt-0001.npz (epoch 1)" in warnings[0]
    # Epoch 1 came from the checkpoint; epochs 2 and 3 were trained again.
    assert len(hist["loss"]) == 3 and hist["loss"][0] == first["loss"][0]
    assert [p.name for p in checkpoints.checkpoint_files(ckpt)] == ["ckpt-0003.npz", "ckpt-0002.npz"]
    assert checkpoints.load_checkpoint(ckpt)["meta"]["epoch"] == 3

    # None usable: one line naming each, and the run is left as it was.
    for path in checkpoints.checkpoint_files(ckpt):
        path.write_bytes(b"PK\x03\x04 cut short")
    before = _snapshot(run)
    with pytest.raises(KerassslError) as err:
        pt.pretrain(pt.resume_config(run, epochs=4), hst_folder, run, resume=True, verbose=0)
    message = str(err.value)
    assert "no usable checkpoint" in message and "\n" not in message
    assert "ckpt-0003.npz is truncated or corrupt" in message and "ckpt-0002.npz" in message
    assert _snapshot(run) == before


def test_resume_of_a_run_killed_before_its_encoder_was_written_finishes_it(hst_folder, tmp_path):
    run = tmp_path / "run"
    history = pt.pretrain(_cfg(epochs=2), hst_folder, run, verbose=0)
    weights = keras.saving.load_model(run / "encoder.keras").get_weights()
    # The state of a kill after the last epoch's checkpoint, before encoder.keras.
    (run / "encoder.keras").unlink()
    (run / "history.json").unlink()
    again = pt.pretrain(pt.resume_config(run), hst_folder, run, resume=True, verbose=0)
    assert again == history == json.loads((run / "history.json").read_text())
    for a, b in zip(keras.saving.load_model(run / "encoder.keras").get_weights(), weights):
        np.testing.assert_array_equal(a, b)  # the checkpointed weights, not a retrained encoder
    with pytest.raises(KerassslError, match="already trained 2"):  # now it is finished
        pt.pretrain(pt.resume_config(run), hst_folder, run, resume=True, verbose=0)


def test_nonfinite_hint_names_only_real_options_and_config_keys():
    import re

    from kerasssl.cli.fit import fit as fit_command
    from kerasssl.cli.pretrain import pretrain as pretrain_command

    for text in (cb.NONFINITE_HINT, cb.nonfinite_hint(np.full((1, 2, 2, 1), 5e4, np.float32), "none")):
        options = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))
        assert options, text
        for command in (pretrain_command, fit_command):
            known = {opt for param in command.params for opt in param.opts}
            assert options <= known, (command.name, options - known)
        keys = set(re.findall(r"\b(data|pretrain|finetune|evaluate|export)\.([a-z_]+)", text))
        assert keys, text
        cfg = RunConfig().to_dict()
        for section, key in keys:
            assert key in cfg[section], f"{section}.{key}"
    assert "--learning-rate" not in cb.NONFINITE_HINT


def test_nan_loss_on_raw_pixels_in_the_thousands_says_so(tmp_path, monkeypatch):
    from conftest import write_hst_folder
    from kerasssl.data.load import load_images
    from kerasssl.data.split import Split
    from kerasssl.methods import SimCLR

    data = write_hst_folder(tmp_path / "counts", 12, 12, size=32)
    for path in data.iterdir():  # survey counts: the same images x 300
        np.save(path, np.load(path) * 300.0)
    real_loss = SimCLR.method_loss
    monkeypatch.setattr(SimCLR, "method_loss", lambda self, out: real_loss(self, out) + float("nan"))
    cfg = _cfg(epochs=1).with_overrides({"data.normalization": "none"})
    with pytest.raises(KerassslError) as err:
        pt.pretrain(cfg, data, tmp_path / "run", verbose=0)
    message = str(err.value)
    images = load_images(data, image_size=32)
    train = images.images[Split.load(tmp_path / "run" / "split.json").indices(images, "train")]
    peak = train.flat[np.argmax(np.abs(train))]
    assert f"the training images reach {peak:,.0f} with data.normalization: none; use asinh or dataset" in message
    assert "\n" not in message

    # The same NaN with normalised pixels: no claim about the pixels.
    with pytest.raises(KerassslError) as err:
        pt.pretrain(_cfg(epochs=1), data, tmp_path / "run2", verbose=0)
    assert "training images reach" not in str(err.value) and "learning rate" in str(err.value)
