"""--debug-nans: the train step names the first non-finite tensor and its step (TF here, JAX in a child).

Also the l2_normalize gradient at a zero row, which is NaN on JAX with the
``x / max(sqrt(|x|^2), eps)`` form (TF's sqrt gradient hides it).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import run_cli

from kerasssl import nandebug
from kerasssl.config import RunConfig
from kerasssl.errors import KerassslError

ROOT = Path(__file__).resolve().parents[1]


def tiny_simclr(optimizer=None, jit_compile=False):
    from kerasssl.encoders import build_encoder
    from kerasssl.methods import SimCLR

    keras.utils.set_random_seed(0)
    model = SimCLR(build_encoder("tiny", (16, 16, 1)), projection_dim=8, hidden_dim=16)
    model.compile(optimizer=optimizer or keras.optimizers.SGD(1e-2), jit_compile=jit_compile)
    return model


def batches(n=16):
    return np.random.default_rng(0).normal(size=(n, 16, 16, 1)).astype("float32")


class InfBiasAfterFirstStep(keras.callbacks.Callback):
    """Makes one output unit of the projection head +inf from step 2 on."""

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            bias = self.model.projector.out.bias
            value = np.zeros(bias.shape, np.float32)
            value[3] = np.inf
            bias.assign(value)


def test_debug_step_names_the_head_that_turns_inf_at_step_2():
    model = tiny_simclr()
    model.debug_nans = True
    report = nandebug.NaNDebugReport()
    history = model.fit(batches(24), batch_size=8, epochs=1, shuffle=False, verbose=0,
                        callbacks=[report, InfBiasAfterFirstStep()])
    assert report.failure == ("first non-finite tensor at step 2 (epoch 1, batch 2): projector of view 1 "
                              f"(shape 8x8): 8 of 64 non-finite, finite part {report.failure.split('finite part ')[1]}")
    low, high = (float(v) for v in report.failure.split("finite part ")[1].split(" .. "))
    assert np.isfinite(low) and np.isfinite(high) and low < high
    assert model.stop_training and report.checked_steps == 2  # stopped after step 2 of 3
    assert not set(nandebug.LOG_KEYS) & set(history.history)  # the debug entries never reach the history
    names = [name for name, _ in model._debug_nans_probes]
    order = ["preprocessed batch", "view 1", "tiny/conv0", "tiny features of view 1", "projector of view 1",
             "nt_xent logits", "loss"]
    assert [names.index(n) for n in order] == sorted(names.index(n) for n in order)
    gradients = [n for n in names if n.startswith("gradient of ")]
    assert gradients[0] == "gradient of projector/out/bias"  # back-propagation order: the head first
    assert names[-1].endswith("after the update")


def test_debug_off_by_default_adds_no_outputs():
    model = tiny_simclr()
    assert model.debug_nans is False
    logs = model.train_on_batch(batches(8), return_dict=True)
    assert not set(nandebug.LOG_KEYS) & set(logs)

    model = tiny_simclr()
    model.debug_nans = True
    logs = model.train_on_batch(batches(8), return_dict=True)
    assert logs["debug_nans_index"] == -1.0 and logs["debug_nans_count"] == 0.0  # a healthy step


def test_debug_nans_refuses_a_distribution_strategy():
    with pytest.raises(KerassslError, match="pretrain.debug_nans runs on one device"):
        RunConfig.from_dict({"pretrain": {"debug_nans": True, "strategy": "mirrored"}})
    with pytest.raises(KerassslError, match="pretrain.debug_nans"):
        RunConfig.from_dict({"pretrain": {"debug_nans": "yes"}})
    assert RunConfig().pretrain.debug_nans is False


def test_pretrain_cli_debug_nans_stops_with_the_tensor_and_step(hst_folder, tmp_path, capsys):
    # AdamW at lr 1e30 moves every weight by ~1e30 in step 1: step 2 overflows.
    config = tmp_path / "blowup.yaml"
    config.write_text("pretrain:\n  learning_rate: 1.0e+30\n  warmup_epochs: 0\n  knn_monitor: false\n"
                      "  method_options: {projection_dim: 8, hidden_dim: 16}\n")
    run = tmp_path / "run"
    code, _, err = run_cli(["pretrain", str(hst_folder), "--run-dir", str(run), "--config", str(config),
                            "--encoder", "tiny", "--epochs", "1", "--steps-per-epoch", "3", "--batch-size", "8",
                            "--debug-nans"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "pretraining stopped: first non-finite tensor at step 2 (epoch 1, batch 2): " in err
    assert "non-finite" in err and "no checkpoint was written" in err
    assert RunConfig.load(run / "config.yaml").pretrain.debug_nans is True


def child_jax():
    """Runs under KERAS_BACKEND=jax: the debug step (jitted) and the l2_normalize gradient."""
    import jax

    from kerasssl import losses

    out = {}
    z = np.random.default_rng(0).normal(size=(6, 8)).astype("float32")
    z[0] = 0.0
    grads = {"nt_xent": jax.grad(lambda a: losses.nt_xent(a, a + 0.1, temperature=0.2))(z),
             "negative_cosine": jax.grad(lambda a: losses.negative_cosine(a, a + 0.1))(z)}
    out["zero_row_grad_finite"] = {k: bool(np.all(np.isfinite(np.asarray(g)))) for k, g in grads.items()}

    model = tiny_simclr(keras.optimizers.SGD(1e30), jit_compile=True)
    out["off_keys"] = sorted(set(nandebug.LOG_KEYS) & set(model.train_on_batch(batches(8), return_dict=True)))
    model = tiny_simclr(keras.optimizers.SGD(1e30), jit_compile=True)
    model.debug_nans = True
    report = nandebug.NaNDebugReport()
    model.fit(batches(24), batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[report])
    out["failure"] = report.failure
    out["checked_steps"] = report.checked_steps
    return out


@pytest.mark.jax
def test_jax_debug_step_and_zero_row_gradients():
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="", PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}")
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["zero_row_grad_finite"] == {"nt_xent": True, "negative_cosine": True}
    assert out["off_keys"] == []
    # SGD at 1e30: step 1 is finite, its update overflows the next step's activations.
    assert out["failure"].startswith("first non-finite tensor at step 2 (epoch 1, batch 2): tiny/")
    assert out["checked_steps"] == 2


if __name__ == "__main__":
    print(json.dumps(child_jax()), flush=True)
