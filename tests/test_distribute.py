"""tf.distribute on a split CPU: strategy selection, global-batch SimCLR, sync BN,
MoCo's queue and DINO's centre kept global.

Logical CPU devices can only be configured before TensorFlow initialises, and
other test modules initialise it in this pytest process, so each distributed
check runs in a fresh child process (``python tests/test_distribute.py
<check>``) that prints one JSON line; the assertions live here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPERATURE = 0.5


def run_child(check, *args, timeout=180, env=None):
    """Run one child check in a fresh interpreter; return its JSON result."""
    child_env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2",
                     CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    child_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, __file__, check, *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=child_env, cwd=ROOT,
    )
    assert proc.returncode == 0, f"child {check} failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def nt_xent_numpy(z1, z2, temperature):
    """NumPy reference: mean cross-entropy of 2N rows against the other 2N-1."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    logits = z @ z.T / temperature
    np.fill_diagonal(logits, -np.inf)
    pos = (np.arange(n2) + n2 // 2) % n2
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    return float(np.mean(lse - logits[np.arange(n2), pos]))


# ---------------------------------------------------------------------------
# Children (run in a fresh process)
# ---------------------------------------------------------------------------
def child_gather(seed):
    """Global-batch NT-Xent on 2 replicas vs one device: loss and summed gradient."""
    import tensorflow as tf

    from kerasssl import distribute, losses

    dist = distribute.setup("mirrored", cpu_devices=2)
    rng = np.random.default_rng(int(seed))
    batch, d_in, d_out = 8, 6, 5
    x1 = rng.normal(size=(batch, d_in)).astype("float32")
    x2 = (x1 + 0.3 * rng.normal(size=x1.shape)).astype("float32")
    w0 = rng.normal(size=(d_in, d_out)).astype("float32")
    with dist.scope():
        w = tf.Variable(w0)

    def shard(a):
        half = len(a) // dist.num_replicas
        return dist.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(a[ctx.replica_id_in_sync_group * half:(ctx.replica_id_in_sync_group + 1) * half])
        )

    def replica_step(a1, a2, gather):
        with tf.GradientTape() as tape:
            z1, z2 = a1 @ w, a2 @ w
            if gather:
                (g1, g2), offset = distribute.gather_replicas(z1, z2)
                loss = losses.nt_xent(z1, z2, TEMPERATURE, all_z1=g1, all_z2=g2, offset=offset)
            else:
                loss = losses.nt_xent(z1, z2, TEMPERATURE)
            scaled = distribute.scale_loss_for_replicas(loss)
        return loss, tape.gradient(scaled, w)

    def replicated(gather):
        loss, grad = dist.strategy.run(
            tf.function(lambda a, b: replica_step(a, b, gather)), args=(shard(x1), shard(x2))
        )
        return (float(dist.strategy.reduce("MEAN", loss, axis=None)),
                dist.strategy.reduce("SUM", grad, axis=None).numpy())

    global_loss, global_grad = replicated(gather=True)
    local_loss, local_grad = replicated(gather=False)
    # One device, the whole batch.
    w_one = tf.Variable(w0)
    with tf.GradientTape() as tape:
        one_loss = losses.nt_xent(tf.constant(x1) @ w_one, tf.constant(x2) @ w_one, TEMPERATURE)
    one_grad = tape.gradient(one_loss, w_one).numpy()
    return {
        "replicas": dist.num_replicas,
        "global_loss": global_loss, "local_loss": local_loss, "one_loss": float(one_loss),
        "numpy_loss": nt_xent_numpy(x1 @ w0, x2 @ w0, TEMPERATURE),
        "global_grad": global_grad.tolist(), "local_grad": local_grad.tolist(),
        "one_grad": one_grad.tolist(),
    }


def child_simclr_first_step(seed):
    """First-step fit loss of SimCLR on 2 replicas (sync BN) vs one device."""
    import keras
    import tensorflow as tf

    from kerasssl import distribute
    from kerasssl.encoders import build_encoder
    from kerasssl.methods import SimCLR

    dist = distribute.setup("mirrored", cpu_devices=2)
    rng = np.random.default_rng(int(seed))
    batch = 16
    images = rng.normal(size=(batch, 16, 16, 1)).astype("float32")

    def build():
        keras.utils.set_random_seed(int(seed))
        # Identity views: no augmentation randomness, so both runs see the same pixels.
        model = SimCLR(build_encoder("tiny", (16, 16, 1)), temperature=TEMPERATURE,
                       projection_dim=16, hidden_dim=32)
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        return model

    def first_step_loss(model):
        data = tf.data.Dataset.from_tensor_slices(images).batch(batch)
        return float(model.fit(data, epochs=1, verbose=0).history["loss"][0])

    one = build()
    weights = one.get_weights()
    one_loss = first_step_loss(one)
    with dist.scope():
        two = build()
        two.set_weights(weights)
        switched = distribute.synchronize_batchnorm(two)
    two_loss = first_step_loss(two)
    with dist.scope():
        unsynced = build()
        unsynced.set_weights(weights)
    unsynced_loss = first_step_loss(unsynced)
    return {"one": one_loss, "two": two_loss, "unsynced": unsynced_loss,
            "switched": switched, "replicas": two.distribute_strategy.num_replicas_in_sync}


MOMENTUM_CASES = {
    # 16 images, 2 steps of 32 keys into 40 slots: the second step wraps around.
    "moco": dict(queue_size=40),
    "moco_v3": dict(version=3),
    "dino": dict(output_dim=32),
}


def child_momentum_methods(seed):
    """MoCo v2/v3 and DINO on 2 replicas (sync BN) vs one device: two steps' losses and state."""
    import keras
    import tensorflow as tf

    from kerasssl import distribute, methods
    from kerasssl.encoders import build_encoder

    dist = distribute.setup("mirrored", cpu_devices=2)
    images = np.random.default_rng(int(seed)).normal(size=(16, 16, 16, 1)).astype("float32")
    out = {}
    for case, options in MOMENTUM_CASES.items():
        def build():
            keras.utils.set_random_seed(int(seed))
            model = methods.get(case.split("_")[0])(build_encoder("tiny", (16, 16, 1)), projection_dim=8,
                                                    hidden_dim=16, total_steps=10, **options)
            model.compile(optimizer=keras.optimizers.SGD(0.1))
            return model

        def run(model):
            data = tf.data.Dataset.from_tensor_slices(images).batch(16)
            losses = model.fit(data, epochs=2, verbose=0).history["loss"]  # 1 step per epoch
            state = {v.name: v.numpy().tolist() for v in model.variables
                     if v.name in ("queue", "queue_pointer", "center", "ema_step")}
            return {"loss": losses, "state": state}

        one = build()
        weights = one.get_weights()
        out[case] = {"one": run(one)}
        with dist.scope():
            two = build()
            two.set_weights(weights)
            distribute.synchronize_batchnorm(two)
        out[case]["two"] = run(two)
    return out


def child_setup_errors():
    """User errors of setup() are KerassslError with a one-line message."""
    from kerasssl import distribute
    from kerasssl.errors import KerassslError

    out = {}

    def message(fn):
        try:
            fn()
        except KerassslError as e:
            return str(e)
        return None

    # TF's devices are initialised (2 logical CPUs): a different split is refused.
    out["late_split"] = message(lambda: distribute.setup("mirrored", cpu_devices=3))
    out["unknown"] = message(lambda: distribute.setup("ring"))
    os.environ.pop("TF_CONFIG", None)
    out["no_tf_config"] = message(lambda: distribute.setup("multiworker"))
    os.environ["TF_CONFIG"] = "{not json"
    out["bad_tf_config"] = message(lambda: distribute.setup("multiworker"))
    os.environ.pop("TF_CONFIG")
    none = distribute.setup("none")
    out["none"] = [none.num_replicas, none.is_chief, none.strategy is None]
    return out


def child_pretrain_resume(data_dir, run_dir):
    """`kerasssl pretrain --strategy mirrored --cpu-devices 2`, then --resume to 2 epochs."""
    from conftest import cli_exit_code as cli

    common = ["--strategy", "mirrored", "--cpu-devices", "2"]
    run = ["--method", "simclr", "--encoder", "tiny", "--image-size", "16", "--steps-per-epoch", "2",
           "--batch-size", "8", *common]
    first = cli("pretrain", data_dir, "--run-dir", run_dir, "--epochs", "1", *run)
    after_first = json.loads((Path(run_dir) / "checkpoints" / "latest.json").read_text())["epoch"]
    second = cli("pretrain", data_dir, "--run-dir", run_dir, "--resume", "--epochs", "2", *common)
    history = json.loads((Path(run_dir) / "history.json").read_text())
    again = f"{run_dir}_again"  # the same 2 epochs in one go: the same batches and draws
    third = cli("pretrain", data_dir, "--run-dir", again, "--epochs", "2", *run)
    uninterrupted = json.loads((Path(again) / "history.json").read_text())
    # Stopped right after a mid-epoch checkpoint (epoch 2, step 1), then resumed from it: the
    # metrics' running sums are SyncOnReadVariables, saved as the replicas' sum.
    from conftest import run_until_checkpoint

    stopped = f"{run_dir}_stopped"
    mid_epoch = run_until_checkpoint(1, 1, lambda: cli("pretrain", data_dir, "--run-dir", stopped, "--epochs", "2",
                                                       "--checkpoint-every", "1", *run))
    latest = json.loads((Path(stopped) / "checkpoints" / "latest.json").read_text())
    resumed = cli("pretrain", data_dir, "--run-dir", stopped, "--resume", *common)
    return {"exit": [first, second, third, resumed], "epoch_after_first": after_first, "history": history,
            "uninterrupted": uninterrupted, "mid_epoch": mid_epoch, "stopped_at": [latest["epoch"], latest["step"]],
            "resumed_mid_epoch": json.loads((Path(stopped) / "history.json").read_text())}


def child_replica_draws(seed):
    """A view pipeline on 2 replicas that hold the same images: each replica must draw its own numbers."""
    import tensorflow as tf

    from kerasssl import distribute
    from kerasssl.layers.views import SYMMETRIC, build_view_pair

    dist = distribute.setup("mirrored", cpu_devices=2)
    rng = np.random.default_rng(int(seed))
    image = rng.normal(size=(1, 16, 16, 1)).astype("float32")
    image[:, 6:10, 6:10] += 20.0  # a bright centre: rotations and crops move it
    images = np.repeat(image, 8, axis=0)
    with dist.scope():
        view, _ = build_view_pair(SYMMETRIC, seed=int(seed))
    reference, _ = build_view_pair(SYMMETRIC, seed=int(seed))  # one device, the same seed
    run = tf.function(lambda x: dist.strategy.run(lambda a: view(a, training=True), args=(x,)))
    batches = dist.strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(images).batch(8))
    per_replica = [o.numpy() for o in dist.strategy.experimental_local_results(run(next(iter(batches))))]
    one = reference(images[:4], training=True).numpy()
    return {"replica_gap": float(np.abs(per_replica[0] - per_replica[1]).max()),
            "replica0_vs_one_device": float(np.abs(per_replica[0] - one).max()),
            "shapes": [list(o.shape) for o in per_replica]}


def child_dropout_draws(seed):
    """Keras's own Dropout on 2 replicas that hold the same rows: one mask for both until dist.prepare."""
    import keras
    import tensorflow as tf

    from kerasssl import distribute

    dist = distribute.setup("mirrored", cpu_devices=2)
    ones = np.ones((8, 64), "float32")

    def build():
        inputs = keras.Input((64,))
        return keras.Model(inputs, keras.layers.Dropout(0.5, seed=int(seed))(inputs))

    def masks(model):
        run = tf.function(lambda x: dist.strategy.run(lambda a: model(a, training=True), args=(x,)))
        batches = dist.strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(ones).batch(8))
        return [o.numpy() for o in dist.strategy.experimental_local_results(run(next(iter(batches))))]

    with dist.scope():
        plain, prepared = build(), build()
    switched = dist.prepare(prepared)
    plain_masks, prepared_masks = masks(plain), masks(prepared)
    one = build()(ones[:4], training=True).numpy()  # one device, the same seed
    return {"switched": switched, "again": dist.prepare(prepared)["random_layers"],
            "plain_gap": float(np.abs(plain_masks[0] - plain_masks[1]).max()),
            "prepared_gap": float(np.abs(prepared_masks[0] - prepared_masks[1]).max()),
            "replica0_vs_one_device": float(np.abs(prepared_masks[0] - one).max()),
            "dropped": float(np.mean(prepared_masks[1] == 0))}


def child_mirrored(seed, data_dir, run_dir):
    """Every mirrored check in one process (TensorFlow starts once: ~10-30 s here)."""
    out = {"gather": child_gather(seed), "simclr": child_simclr_first_step(seed),
           "momentum": child_momentum_methods(seed), "draws": child_replica_draws(seed),
           "dropout": child_dropout_draws(seed)}
    out["pretrain"] = child_pretrain_resume(data_dir, run_dir)
    out["errors"] = child_setup_errors()  # last: TF is initialised by now
    return out


def child_finetune(seed, data_dir, run_dir):
    """Fine-tuning on 2 replicas vs one device (full and linear), then `kerasssl finetune --strategy mirrored`."""
    import keras

    from kerasssl import distribute
    from kerasssl import finetune as ft
    from kerasssl.encoders import build_encoder
    from kerasssl.layers import Preprocess

    dist = distribute.setup("mirrored", cpu_devices=2)
    rng = np.random.default_rng(int(seed))
    x = rng.normal(size=(16, 16, 16, 1)).astype("float32")
    y = (np.arange(16) % 3 != 0).astype("int64")  # 2:1, so the class weights differ
    keras.utils.set_random_seed(int(seed))
    encoder = build_encoder("tiny", (16, 16, 1))  # as a loaded RUN/encoder.keras: variables outside any scope
    stats = ft.feature_statistics(encoder, Preprocess(normalization="zscore"), x)

    def losses(mode, on):
        keras.utils.set_random_seed(int(seed))  # the same head initialisation on both
        model, inner = ft.build_classifier_in_scope(encoder, Preprocess(normalization="zscore"), 2,
                                                    input_shape=(16, 16, 1), mode=mode, feature_stats=stats,
                                                    dist=on)
        # One global batch of 16 per epoch: history["loss"] is each step's loss; the
        # second step's loss checks that the replicas' gradients were summed right.
        history = ft.train_classifier(model, inner, x, y, mode=mode, epochs=2, batch_size=16, learning_rate=1e-2,
                                      encoder_lr_scale=0.5, weight_decay=1e-4,
                                      class_weight=ft.balanced_class_weights(y, 2), seed=int(seed), dist=on)
        return {"loss": history["loss"], "replicas": model.distribute_strategy.num_replicas_in_sync}

    out = {mode: {"one": losses(mode, None), "two": losses(mode, dist)} for mode in ("full", "linear")}

    from conftest import cli_exit_code as cli

    out["cli_exit"] = cli("finetune", run_dir, data_dir, "--mode", "supervised", "--encoder", "tiny",
                          "--epochs", "1", "--batch-size", "8", "--strategy", "mirrored", "--cpu-devices", "2")
    record = json.loads((Path(run_dir) / "finetune.json").read_text())["models"]["classifier.keras"]
    out["cli_record"] = {k: record[k] for k in ("distribution", "loss")}
    return out


CHILDREN = {"mirrored": child_mirrored, "finetune": child_finetune}


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    from conftest import write_class_folders

    tmp = tmp_path_factory.mktemp("mirrored")
    data = write_class_folders(tmp / "data", {"lenses": 12, "nonlenses": 12}, size=16, channels=1)
    return run_child("mirrored", 3, data, tmp / "run", timeout=900)


@pytest.fixture(scope="module")
def mirrored_finetune(tmp_path_factory):
    from conftest import write_class_folders

    tmp = tmp_path_factory.mktemp("mirrored_finetune")
    data = write_class_folders(tmp / "data", {"lenses": 12, "nonlenses": 12}, size=16, channels=1)
    return run_child("finetune", 3, data, tmp / "run", timeout=600)


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["full", "linear"])
def test_finetune_two_replicas_equal_one_device(mirrored_finetune, mode):
    one, two = mirrored_finetune[mode]["one"], mirrored_finetune[mode]["two"]
    assert one["replicas"] == 1 and two["replicas"] == 2
    assert two["loss"][0] == pytest.approx(one["loss"][0], rel=1e-5)  # the first step
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-4)  # and the step after the summed update
    assert one["loss"][1] != pytest.approx(one["loss"][0], rel=1e-6)  # the first step did train


def test_finetune_cli_mirrored(mirrored_finetune):
    assert mirrored_finetune["cli_exit"] == 0
    record = mirrored_finetune["cli_record"]
    assert record["distribution"].startswith("mirrored (tensorflow, 2 replica(s)")
    assert np.all(np.isfinite(record["loss"]))


def test_global_batch_nt_xent_matches_one_device_loss_and_gradient(mirrored):
    r = mirrored["gather"]
    assert r["replicas"] == 2
    # The one-device loss is the reference; NumPy confirms it.
    assert r["one_loss"] == pytest.approx(r["numpy_loss"], rel=1e-5)
    assert r["global_loss"] == pytest.approx(r["one_loss"], rel=1e-5)
    # Without the gather each replica sees fewer negatives: a different loss.
    assert abs(r["local_loss"] - r["one_loss"]) > 1e-3
    # all_gather is differentiable: summed replica gradients = one-device gradient.
    np.testing.assert_allclose(r["global_grad"], r["one_grad"], rtol=1e-4, atol=1e-6)
    assert not np.allclose(r["local_grad"], r["one_grad"], rtol=1e-3, atol=1e-5)


def test_simclr_first_step_loss_two_replicas_equals_one_device(mirrored):
    r = mirrored["simclr"]
    assert r["replicas"] == 2
    assert r["switched"] > 0
    assert r["two"] == pytest.approx(r["one"], rel=1e-4)
    # Per-replica BatchNorm statistics change the loss: sync BN is what makes them equal.
    assert abs(r["unsynced"] - r["one"]) > 1e-4 * abs(r["one"])


def test_each_replica_draws_its_own_augmentations(mirrored):
    # Every replica holds a copy of each layer's seed state; with plain SeedGenerators
    # all copies draw the same numbers, so the same image on two replicas came out the same.
    r = mirrored["draws"]
    assert r["shapes"] == [[4, 16, 16, 1], [4, 16, 16, 1]]
    assert r["replica_gap"] > 1.0
    assert r["replica0_vs_one_device"] < 1e-5  # replica 0 keeps the one-device stream


def test_prepare_gives_keras_dropout_its_own_masks_per_replica(mirrored):
    # EfficientNet's stochastic depth is a keras.layers.Dropout: with its plain SeedGenerator
    # every replica dropped the same blocks for the same rows.
    r = mirrored["dropout"]
    assert r["switched"] == {"random_layers": 1, "batchnorm": 0}
    assert r["again"] == 0  # already per replica
    assert r["plain_gap"] == 0.0  # the bug dist.prepare fixes
    assert r["prepared_gap"] > 1.0  # kept rows are scaled by 2, dropped ones are 0
    assert 0.3 < r["dropped"] < 0.7
    assert r["replica0_vs_one_device"] == 0.0  # replica 0 keeps the one-device stream


@pytest.mark.parametrize("case", sorted(MOMENTUM_CASES))
def test_moco_and_dino_two_replicas_equal_one_device(mirrored, case):
    r = mirrored["momentum"][case]
    one, two = r["one"], r["two"]
    # Both steps: the second scores against the queue / centre the first left.
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-4)
    assert one["state"]["ema_step"] == two["state"]["ema_step"] == 2.0
    if case == "moco":
        # Every replica enqueued the whole global batch (both views): 2 x 32 keys into 40 slots.
        assert one["state"]["queue_pointer"] == two["state"]["queue_pointer"] == 64 % 40
        np.testing.assert_allclose(two["state"]["queue"], one["state"]["queue"], rtol=1e-4, atol=1e-5)
    if case == "dino":
        # The centre follows the global batch mean, not each replica's half.
        assert np.abs(one["state"]["center"]).max() > 0
        np.testing.assert_allclose(two["state"]["center"], one["state"]["center"], rtol=1e-4, atol=1e-6)


def test_pretrain_cli_mirrored_checkpoint_and_resume(mirrored):
    r = mirrored["pretrain"]
    assert r["exit"] == [0, 0, 0, 0]
    assert r["epoch_after_first"] == 1
    losses = r["history"]["loss"]
    assert len(losses) == 2 and np.all(np.isfinite(losses))
    # Resumed or not, 2 replicas train on the same batches with the same draws: the
    # batches once depended on how many iterators Keras made (reshuffle per iterator).
    np.testing.assert_allclose(np.ravel(r["history"]["step_loss"]), np.ravel(r["uninterrupted"]["step_loss"]),
                               rtol=1e-5)


def test_pretrain_mirrored_resumes_mid_epoch_with_the_uninterrupted_loss_curve(mirrored):
    r = mirrored["pretrain"]
    assert r["mid_epoch"] == "stopped" and r["stopped_at"] == [1, 1]
    resumed, reference = r["resumed_mid_epoch"], r["uninterrupted"]
    np.testing.assert_allclose(np.ravel(resumed["step_loss"]), np.ravel(reference["step_loss"]), rtol=1e-5)
    # The epoch's logged mean: the restored running sums plus the resumed step.
    np.testing.assert_allclose(resumed["loss"], reference["loss"], rtol=1e-5)


def test_setup_user_errors_are_one_line(mirrored):
    r = mirrored["errors"]
    assert "already initialised" in r["late_split"]
    assert "unknown strategy 'ring'" in r["unknown"]
    assert "TF_CONFIG" in r["no_tf_config"]
    assert "not valid JSON" in r["bad_tf_config"]
    assert r["none"] == [1, True, True]
    for key in ("late_split", "unknown", "no_tf_config", "bad_tf_config"):
        assert "\n" not in r[key]


def test_draw_per_replica_switches_efficientnet_stochastic_depth_in_place():
    import keras

    from kerasssl import distribute
    from kerasssl.encoders import build_encoder
    from kerasssl.layers.base import ReplicaSeedGenerator

    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.distribute replicas only")
    encoder = build_encoder("efficientnetb0", (32, 32, 3))
    dropouts = [layer for layer in encoder._flatten_layers() if isinstance(layer, keras.layers.Dropout)]
    states = [layer.seed_generator.state for layer in dropouts]
    config, n_variables = encoder.get_config(), len(encoder.variables)
    assert distribute.draw_per_replica(encoder) == len(dropouts) == 9
    assert all(type(layer.seed_generator) is ReplicaSeedGenerator for layer in dropouts)
    # The same state variables: checkpoints restore into them, the saved config is unchanged.
    assert all(layer.seed_generator.state is state for layer, state in zip(dropouts, states))
    assert encoder.get_config() == config and len(encoder.variables) == n_variables
    # Outside a strategy the stream is the plain one.
    plain, switched = keras.layers.Dropout(0.5, seed=4), keras.layers.Dropout(0.5, seed=4)
    assert distribute.draw_per_replica(switched) == 1
    ones = np.ones((4, 32), "float32")
    np.testing.assert_array_equal(plain(ones, training=True), switched(ones, training=True))


def test_tf_config_chief_and_validation():
    from kerasssl import distribute
    from kerasssl.errors import KerassslError

    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    conf = {"cluster": cluster, "task": {"type": "worker", "index": 1}}
    parsed = distribute.read_tf_config({"TF_CONFIG": json.dumps(conf)})
    assert not distribute._is_chief_task(parsed)
    conf["task"]["index"] = 0
    assert distribute._is_chief_task(distribute.read_tf_config({"TF_CONFIG": json.dumps(conf)}))
    with_chief = {"cluster": dict(cluster, chief=["127.0.0.1:3"]), "task": {"type": "worker", "index": 0}}
    assert not distribute._is_chief_task(distribute.read_tf_config({"TF_CONFIG": json.dumps(with_chief)}))
    conf["task"]["index"] = 2
    with pytest.raises(KerassslError, match="not in the cluster"):
        distribute.read_tf_config({"TF_CONFIG": json.dumps(conf)})


def test_non_chief_writes_to_temporary_folder(tmp_path):
    from kerasssl.distribute import Distribution

    chief = Distribution("multiworker", is_chief=True)
    assert chief.write_path(tmp_path / "encoder.keras") == tmp_path / "encoder.keras"
    worker = Distribution("multiworker", is_chief=False, task_id=1)
    path = worker.write_path(tmp_path / "encoder.keras")
    assert path.name == "encoder.keras" and tmp_path not in path.parents
    path.write_text("x")
    worker.cleanup()
    assert not path.parent.exists()


if __name__ == "__main__":
    check, *argv = sys.argv[1:]
    result = CHILDREN[check](*argv)
    print(json.dumps(result), flush=True)
    os._exit(0)  # skip TF's slow teardown: the result is out
