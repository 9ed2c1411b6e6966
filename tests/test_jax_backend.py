"""The JAX backend: DataParallel training and a JAX-trained model exported with TF.

The JAX work runs in one child process with ``KERAS_BACKEND=jax`` (this pytest
process runs the TensorFlow backend): it sets up 2 JAX CPU devices, trains a
tiny SimCLR under ``keras.distribution.DataParallel`` and compares the
first-step loss with one device (JAX computes BatchNorm moments and the
NT-Xent over the global sharded batch, so they agree), then runs
``kerasssl pretrain --strategy mirrored`` on a fake data folder. Back in
this (TensorFlow) process, the JAX-trained ``RUN/encoder.keras`` is turned
into a classifier and exported as a SavedModel and TFLite file.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_class_folders

ROOT = Path(__file__).resolve().parents[1]


def child_jax(data_dir, run_dir):
    """Runs under KERAS_BACKEND=jax; returns a dict of results."""
    import keras

    from kerasssl import distribute
    from kerasssl.cli import main as cli_main
    from kerasssl.encoders import build_encoder
    from kerasssl.methods import SimCLR

    out = {"backend": keras.backend.backend()}
    # 1. The CLI on 2 JAX CPU devices (it configures them before JAX starts).
    try:
        cli_main(["pretrain", data_dir, "--run-dir", run_dir, "--method", "simclr",
                  "--encoder", "tiny", "--image-size", "16", "--epochs", "1",
                  "--steps-per-epoch", "2", "--batch-size", "8",
                  "--strategy", "mirrored", "--cpu-devices", "2"])
    except SystemExit as e:
        out["cli_exit"] = e.code
    import jax

    out["devices"] = len(jax.devices())
    out["distribution"] = type(keras.distribution.distribution()).__name__

    # 2. First-step loss: DataParallel over 2 devices vs one device.
    rng = np.random.default_rng(0)
    images = rng.normal(size=(16, 16, 16, 1)).astype("float32")

    def build():
        keras.utils.set_random_seed(0)
        model = SimCLR(build_encoder("tiny", (16, 16, 1)), temperature=0.5,
                       projection_dim=16, hidden_dim=32)
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        return model

    keras.distribution.set_distribution(None)
    one = build()
    weights = one.get_weights()
    out["one"] = float(one.fit(images, batch_size=16, epochs=1, shuffle=False, verbose=0).history["loss"][0])
    dist = distribute.setup("mirrored")
    two = build()
    two.set_weights(weights)
    out["two"] = float(two.fit(images, batch_size=16, epochs=1, shuffle=False, verbose=0).history["loss"][0])
    out["replicas"] = dist.num_replicas
    kernel = two.encoder.trainable_weights[0]
    out["kernel_sharding"] = str(getattr(kernel.value, "sharding", None))

    # 3. Fine-tuning: first steps on DataParallel vs one device, then the CLI on 2 devices.
    from kerasssl import finetune as ft
    from kerasssl.layers import Preprocess

    labels = (np.arange(16) % 3 != 0).astype("int64")
    encoder = build_encoder("tiny", (16, 16, 1))

    def finetune_losses(on):
        keras.utils.set_random_seed(0)
        model, inner = ft.build_classifier_in_scope(encoder, Preprocess(normalization="zscore"), 2,
                                                    input_shape=(16, 16, 1), mode="full", dist=on)
        return ft.train_classifier(model, inner, images, labels, mode="full", epochs=2, batch_size=16,
                                   learning_rate=1e-2, encoder_lr_scale=0.5, weight_decay=1e-4,
                                   class_weight=None, jit_compile=True, dist=on)["loss"]

    out["finetune_two"] = finetune_losses(dist)
    keras.distribution.set_distribution(None)
    out["finetune_one"] = finetune_losses(None)

    from conftest import cli_exit_code as cli

    common = ["--mode", "full", "--epochs", "2", "--strategy", "mirrored", "--cpu-devices", "2"]
    # An odd train split and val split: every sharded predict and the last batch are padded / trimmed.
    out["finetune_cli_exit"] = cli("finetune", run_dir, data_dir, "--batch-size", "8", *common)
    out["finetune_odd_batch_exit"] = cli("finetune", run_dir, data_dir, "--batch-size", "7",
                                         "--output", Path(run_dir) / "odd.keras", *common)

    # 4. A DataParallel pretraining stopped after a mid-epoch checkpoint resumes on the same curve
    #    (the trainer keeps its state outside the variables mid-epoch: jax_state_sync).
    from conftest import run_until_checkpoint

    run = ["--method", "moco", "--encoder", "tiny", "--image-size", "16", "--steps-per-epoch", "3",
           "--batch-size", "8", "--epochs", "2", "--checkpoint-every", "2", "--strategy", "mirrored",
           "--cpu-devices", "2"]
    whole, stopped = f"{run_dir}_whole", f"{run_dir}_stopped"
    out["midepoch_exit"] = [cli("pretrain", data_dir, "--run-dir", whole, *run)]
    out["midepoch_stopped"] = run_until_checkpoint(1, 2, lambda: cli("pretrain", data_dir, "--run-dir", stopped, *run))
    out["midepoch_exit"].append(cli("pretrain", data_dir, "--run-dir", stopped, "--resume"))
    out["midepoch"] = {name: json.loads((Path(d) / "history.json").read_text())["step_loss"]
                       for name, d in (("whole", whole), ("resumed", stopped))}

    # 5. fit with its export stage on: refused before it trains (a SavedModel needs TensorFlow).
    fit_dir = Path(f"{run_dir}_fit")
    out["fit_export_exit"] = cli("fit", data_dir, "--run-dir", fit_dir, "--encoder", "tiny", "--image-size", "16")
    out["fit_export_wrote"] = fit_dir.exists()
    return out


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jax")
    data = write_class_folders(tmp / "data", {"lenses": 12, "nonlenses": 12}, size=16, channels=1)
    run_dir = tmp / "run"
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="", PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}")
    proc = subprocess.run([sys.executable, __file__, str(data), str(run_dir)], capture_output=True,
                          text=True, timeout=900, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["run_dir"] = run_dir
    result["data"] = data
    return result


def test_jax_pretrain_cli_trains_on_two_devices(jax_run):
    assert jax_run["backend"] == "jax"
    assert jax_run.get("cli_exit", 0) == 0
    assert jax_run["devices"] == 2
    run_dir = jax_run["run_dir"]
    history = json.loads((run_dir / "history.json").read_text())
    losses = history["loss"] if "loss" in history else history["history"]["loss"]
    assert len(losses) == 1 and np.isfinite(losses[0])
    assert (run_dir / "encoder.keras").exists()


def test_jax_data_parallel_first_step_matches_one_device(jax_run):
    assert jax_run["replicas"] == 2
    assert jax_run["distribution"] == "DataParallel"
    assert jax_run["two"] == pytest.approx(jax_run["one"], rel=1e-4)


def test_jax_data_parallel_finetune_matches_one_device_and_runs_from_the_cli(jax_run):
    np.testing.assert_allclose(jax_run["finetune_two"][0], jax_run["finetune_one"][0], rtol=1e-5)
    np.testing.assert_allclose(jax_run["finetune_two"], jax_run["finetune_one"], rtol=1e-4)
    assert jax_run["finetune_cli_exit"] == 0
    record = json.loads((jax_run["run_dir"] / "finetune.json").read_text())["models"]["classifier.keras"]
    assert record["distribution"].startswith("mirrored (jax, 2 replica(s)")
    assert np.all(np.isfinite(record["loss"]))
    # A batch the devices cannot split is a one-line error (exit 2), nothing written.
    assert jax_run["finetune_odd_batch_exit"] == 2
    assert not (jax_run["run_dir"] / "odd.keras").exists()


def test_jax_data_parallel_resumes_mid_epoch_on_the_uninterrupted_curve(jax_run):
    assert jax_run["midepoch_stopped"] == "stopped" and jax_run["midepoch_exit"] == [0, 0]
    curves = jax_run["midepoch"]
    assert [len(epoch) for epoch in curves["whole"]] == [3, 3]
    # MoCo: weights, optimizer, momentum encoder, queue, seed states and metric sums all restored.
    assert curves["resumed"] == curves["whole"]


def test_jax_fit_with_export_is_refused_before_it_trains(jax_run):
    assert jax_run["fit_export_exit"] == 2
    assert not jax_run["fit_export_wrote"]


def test_export_of_jax_trained_encoder(jax_run, tmp_path):
    """A JAX-trained encoder loads under TF and exports (SavedModel + TFLite fp32)."""
    import keras

    from kerasssl.export import export_saved_model
    from kerasssl.finetune import build_classifier, load_pretrained_encoder
    from kerasssl.layers.preprocess import load_preprocess
    from kerasssl.rundir import RunDir

    run_dir = jax_run["run_dir"]
    encoder = load_pretrained_encoder(run_dir, (16, 16, 1))
    preprocess = load_preprocess(RunDir(run_dir).preprocess)
    model = build_classifier(encoder, preprocess, 2, input_shape=(16, 16, 1))
    images = np.random.default_rng(1).normal(5.0, 2.0, size=(4, 16, 16, 1)).astype("float32")
    version = export_saved_model(model, tmp_path / "saved", "lens_finder", tflite="fp32",
                                 class_names=["nonlens", "lens"], sample_inputs=images)
    assert (version / "saved_model.pb").exists()
    assert list(version.glob("*.tflite"))
    assert isinstance(model, keras.Model)


if __name__ == "__main__":
    print(json.dumps(child_jax(*sys.argv[1:3])), flush=True)
    os._exit(0)  # skip the backends' slow teardown: the result is out
