"""--checkpoint-every: a run stopped mid-epoch resumes from the step with the uninterrupted run's data
order and state, so its per-step loss curve continues the uninterrupted one.

Tolerance: exact. On the CPU every kernel here is deterministic for a given
shape and the resumed run restores every bit of state (float32 weights,
optimizer moments and iteration count, BatchNorm statistics, momentum
encoders, MoCo's queue, DINO's centre, the augmentations' seed states, the
metrics' running sums) and rebuilds the same batches, so anything short of
bit-equality is a bug. (On a GPU, non-deterministic kernels would need a
tolerance; these tests run on the CPU.)
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import run_cli, stop_after_checkpoint, write_class_folders
from kerasssl import pretrain as pt
from kerasssl.checkpoints import checkpoint_files, load_checkpoint_meta
from kerasssl.config import RunConfig
from kerasssl.data.pipeline import epoch_batches, make_dataset
from kerasssl.errors import KerassslError
from kerasssl.rundir import RunDir
from test_pool import write_pool

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, STEPS, EVERY = 2, 6, 2


def _cfg(method, unlabeled=()):
    return RunConfig.from_dict({"seed": 3, "data": {"image_size": 16}, "pretrain": {
        "method": method, "encoder": "tiny", "epochs": EPOCHS, "batch_size": 4, "steps_per_epoch": STEPS,
        "checkpoint_every": EVERY, "knn_monitor": False, "unlabeled": list(unlabeled),
        "method_options": {"projection_dim": 16, "hidden_dim": 32}}})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("midepoch")
    # Three bands, as the pool's cutouts (a pool must match DATA's image shape).
    return {"labelled": write_class_folders(root / "lab", {"lenses": 10, "nonlenses": 10}, size=16),
            "pool": write_pool(root / "pool", 24)}


def _assert_continues(reference, resumed, epoch, step):
    """The resumed history equals the uninterrupted one, step losses included (exactly)."""
    assert [len(s) for s in resumed["step_loss"]] == [STEPS] * EPOCHS
    assert resumed["step_loss"][epoch][step:] == reference["step_loss"][epoch][step:]
    assert resumed["step_loss"] == reference["step_loss"]
    assert resumed["loss"] == reference["loss"] and resumed["embedding_std"] == reference["embedding_std"]


def _encoder_weights(run):
    return keras.saving.load_model(run / "encoder.keras").get_weights()


@pytest.mark.parametrize("method, source", [
    ("moco", "array"),  # the labelled-array path; MoCo's queue and momentum encoder
    pytest.param("simclr", "tfrecord", marks=pytest.mark.slow),  # a shard pool alone (~30 CPU-s)
])
def test_a_run_stopped_mid_epoch_resumes_with_the_same_loss_curve(data, tmp_path, capsys,
                                                                   method, source):
    labelled, unlabeled = data["labelled"], ()
    if source == "tfrecord":
        shards = tmp_path / "shards"
        code, _, err = run_cli(["convert", data["pool"], shards, "--to", "tfrecord", "--unlabeled", "--shards", "3",
                                "--no-progress"], capsys)
        assert code == 0, err
        labelled, unlabeled = None, (str(shards / "*.tfrecord*"),)
    cfg = _cfg(method, unlabeled)
    reference = pt.pretrain(cfg, labelled, tmp_path / "whole", verbose=0)

    run = tmp_path / "stopped"
    # The state of a kill right after the epoch-2 step-2 checkpoint.
    with stop_after_checkpoint(1, EVERY), pytest.raises(RuntimeError, match="stopped"):
        pt.pretrain(cfg, labelled, run, verbose=0)
    meta = load_checkpoint_meta(run / "checkpoints")
    assert (meta["epoch"], meta["step"], meta["steps_per_epoch"]) == (1, EVERY, STEPS)
    assert meta["data"]["batches_consumed"] == EVERY and meta["data"]["global_batch"] == STEPS + EVERY
    assert meta["epoch_step_loss"] == reference["step_loss"][1][:EVERY]
    assert [p.name for p in checkpoint_files(run / "checkpoints")] == ["ckpt-0001-0000002.npz", "ckpt-0001.npz"]

    resumed = pt.pretrain(pt.resume_config(run), labelled, run, resume=True, verbose=0)
    _assert_continues(reference, resumed, 1, EVERY)
    for a, b in zip(_encoder_weights(run), _encoder_weights(tmp_path / "whole")):
        np.testing.assert_array_equal(a, b)


def _cli(data, run, *extra):
    return [sys.executable, "-m", "kerasssl", "pretrain", str(data["labelled"]), "--unlabeled", str(data["pool"]),
            "--run-dir", str(run), "--encoder", "tiny", "--image-size", "16", "--batch-size", "4",
            "--epochs", str(EPOCHS), "--steps-per-epoch", str(STEPS), "--seed", "3", *extra]


@pytest.mark.slow  # three CLI processes, one killed with SIGKILL (~60 CPU-s)
def test_sigkill_mid_epoch_then_resume_continues_the_uninterrupted_loss_curve(data, tmp_path):
    # DATA's train split and a folder pool, streamed; the CLI in real processes, one killed with SIGKILL.
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = subprocess.Popen(_cli(data, whole, "--checkpoint-every", "0"), env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen(_cli(data, killed, "--checkpoint-every", str(EVERY)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    latest = killed / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            meta = load_checkpoint_meta(latest.parent) if latest.exists() else None
            if meta and meta["epoch"] == 1 and meta["step"] >= EVERY:  # in the second epoch
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before its kill:\n{proc.communicate()[1][-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-2000:]
    meta = load_checkpoint_meta(latest.parent)
    assert meta["epoch"] == 1 and 0 < meta["step"] < STEPS, meta  # killed mid-epoch, after its checkpoint
    assert not (killed / "encoder.keras").exists()

    resume = [sys.executable, "-m", "kerasssl", "pretrain", str(data["labelled"]), "--run-dir", str(killed),
              "--resume"]
    without_data = subprocess.run(resume[:4] + resume[5:], env=env, capture_output=True, text=True, timeout=300)
    assert without_data.returncode == 2 and "give DATA to resume it" in without_data.stderr
    done = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_continues(json.loads((whole / "history.json").read_text()),
                      json.loads((killed / "history.json").read_text()), 1, meta["step"])
    for a, b in zip(_encoder_weights(killed), _encoder_weights(whole)):
        np.testing.assert_array_equal(a, b)


def test_epoch_batches_are_a_function_of_seed_and_epoch_and_skip_to_the_step():
    x = np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1)

    def make(seed):
        return make_dataset(x, batch_size=4, seed=seed, repeat=True, drop_remainder=True)

    def ids(ds):
        return [b[:, 0, 0, 0].tolist() for b in ds.as_numpy_iterator()]

    epoch3 = ids(epoch_batches(make, 0, 3, 5))
    assert len(epoch3) == 5 and epoch3 == ids(epoch_batches(make, 0, 3, 5))
    assert ids(epoch_batches(make, 0, 3, 5, start_step=2)) == epoch3[2:]
    assert epoch3 != ids(epoch_batches(make, 0, 4, 5)) and epoch3 != ids(epoch_batches(make, 1, 3, 5))
    with pytest.raises(KerassslError, match="outside an epoch of 5 steps"):
        epoch_batches(make, 0, 3, 5, start_step=5)


def test_checkpoint_every_is_checked_and_a_changed_epoch_length_refused(data, tmp_path, capsys):
    for bad in (-1, 1.5, "2"):
        with pytest.raises(KerassslError, match="pretrain.checkpoint_every"):
            RunConfig.from_dict({"pretrain": {"checkpoint_every": bad}})
    code, _, err = run_cli(["pretrain", str(data["labelled"]), "--run-dir", tmp_path / "r", "--checkpoint-every",
                            "-2"], capsys)
    assert code == 2 and "--checkpoint-every" in err
    # A mid-epoch checkpoint of a 6-step epoch cannot resume an epoch of another length.
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    RunDir(run).save_config(_cfg("simclr").with_overrides({"pretrain.steps_per_epoch": 5}))
    record = {"epoch": 0, "step": 2, "steps_per_epoch": STEPS, "file": "ckpt-0000-0000002.npz", "history": {}}
    np.savez(run / "checkpoints" / "ckpt-0000-0000002.npz", model_00000=np.zeros(1))
    (run / "checkpoints" / "ckpt-0000-0000002.json").write_text(json.dumps(record))
    with pytest.raises(KerassslError, match="taken at step 2 of a 6-step epoch; this run has 5 steps per epoch"):
        pt.plan_pretraining(pt.resume_config(run), data["labelled"], run, resume=True)
