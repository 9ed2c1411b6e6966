"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 pretrain together.

Each worker is a fresh interpreter with its own ``TF_CONFIG`` (two free local
ports), running the same ``kerasssl.pretrain.pretrain`` call with
``pretrain.strategy = multiworker`` on the same data and the same run
directory, as on a cluster with a shared file system. Both must finish, agree
on the loss of every epoch (Keras all-reduces the logged loss), and only the
chief (worker 0) may write into the run directory. Fine-tuning (which shares
``pretrain.strategy``) is held to the same: two workers, one loss, one writer.

With unlabeled pools each worker streams its own part (file-level sharding):
the workers record the images of every batch they trained on (a wrapper on
``kerasssl.data.pipeline.epoch_batches``, applied after the epoch's ``take``, so
exactly the consumed batches), and the ids of the two workers must be disjoint
and together the whole pool, for a folder pool and a 4-shard TFRecord pool.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_class_folders

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900


def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1 (held open together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def worker_main(data_dir, run_dir):
    """Runs in each worker process: a tiny pretraining under multiworker."""
    from kerasssl import pretrain
    from kerasssl.config import RunConfig

    cfg = RunConfig.from_dict({
        "data": {"image_size": 16},
        # checkpoint_every 1: a mid-epoch checkpoint reads the metrics' SyncOnRead sums (collectives).
        "pretrain": {"method": "simclr", "encoder": "tiny", "epochs": 2, "steps_per_epoch": 2,
                     "batch_size": 8, "strategy": "multiworker", "knn_monitor": False, "checkpoint_every": 1,
                     "method_options": {"projection_dim": 16, "hidden_dim": 32}},
    })
    history = pretrain.pretrain(cfg, data_dir, run_dir)
    losses = history["loss"] if "loss" in history else history["history"]["loss"]

    # The same run stopped on both workers right after the epoch-2 step-1 checkpoint, then resumed.
    import time

    from conftest import run_until_checkpoint
    from kerasssl.distribute import read_tf_config

    stopped = Path(f"{run_dir}_stopped")
    outcome = run_until_checkpoint(1, 1, lambda: pretrain.pretrain(cfg, data_dir, stopped))
    # A restarted job starts once every worker has stopped: by then the chief's checkpoint is written.
    Path(f"{stopped}.stopped-{read_tf_config()['task']['index']}").touch()
    deadline = time.time() + 120
    while len(list(stopped.parent.glob(f"{stopped.name}.stopped-*"))) < 2:
        if time.time() > deadline:  # resuming alone would hang in the first collective, or test nothing
            raise RuntimeError("the other worker did not stop after its checkpoint within 120 s")
        time.sleep(0.05)
    resumed = pretrain.pretrain(pretrain.resume_config(stopped), data_dir, stopped, resume=True)
    return {"loss": [float(v) for v in losses], "step_loss": history["step_loss"], "stopped": outcome,
            "resumed_step_loss": resumed["step_loss"]}


def worker_finetune_main(data_dir, run_dir):
    """Runs in each worker process: a tiny supervised fine-tuning under multiworker."""
    from kerasssl import finetune
    from kerasssl.config import RunConfig

    cfg = RunConfig.from_dict({
        "data": {"image_size": 16},
        "pretrain": {"encoder": "tiny", "strategy": "multiworker"},
        "finetune": {"mode": "supervised", "epochs": 2, "batch_size": 8, "augment": False},
    })
    record = finetune.finetune(cfg, data_dir, run_dir)
    return {"loss": [float(v) for v in record["loss"]], "distribution": record["distribution"]}


def pool_worker_main(out_dir, *pools):
    """Runs in each worker process: one tiny pretraining per pool, recording what each step trained on."""
    import tensorflow as tf

    from kerasssl import pretrain
    from kerasssl.config import RunConfig
    from kerasssl.data import pipeline
    from kerasssl.distribute import read_tf_config
    from kerasssl.fingerprints import fingerprints

    index = read_tf_config()["task"]["index"]
    seen = {}
    real = pipeline.epoch_batches

    def recording(make, seed, epoch, steps_per_epoch, start_step=0):
        # Keras reads a batch of every fit's dataset to build the model under a strategy, then
        # iterates it afresh to train: each iteration is recorded apart (a token drawn as it starts).
        iterations = seen.setdefault(str(epoch), [])

        def start():
            iterations.append([])
            return np.int64(len(iterations) - 1)

        def record(k, batch):
            iterations[int(k)].extend(bytes(r).hex() for r in fingerprints(batch))
            return batch

        ds = real(make, seed, epoch, steps_per_epoch, start_step)
        token = tf.data.Dataset.range(1).map(lambda _: tf.numpy_function(start, [], tf.int64))
        return token.flat_map(lambda k: ds.map(
            lambda b: tf.ensure_shape(tf.numpy_function(record, [k, b], tf.float32), b.shape)))

    pipeline.epoch_batches = recording
    results = {}
    for name, pool in zip(("folder", "tfrecord"), pools):
        seen.clear()
        cfg = RunConfig.from_dict({"data": {"image_size": 16}, "pretrain": {
            "method": "simclr", "encoder": "tiny", "epochs": 1, "steps_per_epoch": 3, "batch_size": 8,
            # 1: one epoch is exactly one pass over each worker's shards (no blending of passes)
            "shuffle_buffer": 1, "strategy": "multiworker", "knn_monitor": False, "unlabeled": [pool],
            "method_options": {"projection_dim": 16, "hidden_dim": 32}}})
        history = pretrain.pretrain(cfg, None, Path(out_dir) / f"run-{name}", verbose=0)
        results[name] = {"loss": history["loss"], "seen": dict(seen)}
    (Path(out_dir) / f"worker{index}.json").write_text(json.dumps(results))
    return {"index": index}


def start_workers(args):
    """Two worker processes running this file with ``args``; their last stdout line (JSON) each."""
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2",
                   CUDA_VISIBLE_DEVICES="", PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, __file__, *map(str, args)], env=env,
                                      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for index, proc in enumerate(procs):
            out, err = proc.communicate(timeout=TIMEOUT_S)
            assert proc.returncode == 0, f"worker {index} failed:\n{err[-4000:]}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:  # never leave a worker waiting on its peer
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mw")
    data = write_class_folders(tmp / "data", {"lenses": 16, "nonlenses": 16}, size=16, channels=1)
    run_dir = tmp / "run"
    return {"results": start_workers([data, run_dir]), "run_dir": run_dir}


@pytest.fixture(scope="module")
def two_finetuning_workers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mw_finetune")
    data = write_class_folders(tmp / "data", {"lenses": 16, "nonlenses": 16}, size=16, channels=1)
    run_dir = tmp / "run"
    return {"results": start_workers(["finetune", data, run_dir]), "run_dir": run_dir}


def test_two_workers_finish_and_agree_on_the_loss(two_workers):
    chief, worker = two_workers["results"]
    assert len(chief["loss"]) == 2
    assert np.all(np.isfinite(chief["loss"]))
    np.testing.assert_allclose(worker["loss"], chief["loss"], rtol=1e-6)


def test_two_workers_stopped_mid_epoch_resume_on_the_uninterrupted_curve(two_workers):
    for result in two_workers["results"]:
        assert result["stopped"] == "stopped"
        np.testing.assert_allclose(np.ravel(result["resumed_step_loss"]), np.ravel(result["step_loss"]),
                                   rtol=1e-6)


def test_only_the_chief_writes_the_run_directory(two_workers):
    run_dir = two_workers["run_dir"]
    assert (run_dir / "encoder.keras").exists()
    assert (run_dir / "history.json").exists()
    # One invocation recorded (the chief's), and no worker leftovers.
    lines = (run_dir / "runs.jsonl").read_text().splitlines() if (run_dir / "runs.jsonl").exists() else []
    assert len(lines) <= 1
    assert not [p for p in run_dir.rglob("*") if "worker" in p.name]
    # The second epoch's mid-epoch checkpoint (step 1) is kept beside the last epoch's.
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.npz")) == ["ckpt-0001-0000001.npz",
                                                                             "ckpt-0002.npz"]


@pytest.mark.slow  # two MWMS pretrainings in two processes (~40 CPU-s each)
def test_each_worker_trains_on_its_own_part_of_the_pool(tmp_path, capsys):
    from conftest import run_cli
    from test_pool import scanned, write_pool

    pool = write_pool(tmp_path / "pool", 24, nested=False)
    shards = tmp_path / "shards"
    code, _, err = run_cli(["convert", pool, shards, "--to", "tfrecord", "--unlabeled", "--shards", "4",
                            "--no-progress"], capsys)
    assert code == 0, err
    pattern = str(shards / "*.tfrecord*")
    out = tmp_path / "out"
    out.mkdir()
    start_workers(["pools", out, pool, pattern])
    workers = [json.loads((out / f"worker{k}.json").read_text()) for k in range(2)]
    for name, path in (("folder", pool), ("tfrecord", pattern)):
        scan = scanned(path)
        by_fingerprint = {bytes(f).hex(): int(i) for f, i in zip(scan.fingerprints, scan.ids)}
        # The last iteration of epoch 0 is the one fit trained on.
        ids = [[by_fingerprint[f] for f in w[name]["seen"]["0"][-1]] for w in workers]
        # 3 steps x 8 images = 24, 4 per worker per step: each worker its own 12, once each.
        assert [len(i) for i in ids] == [12, 12] and [len(set(i)) for i in ids] == [12, 12], name
        assert not set(ids[0]) & set(ids[1]), name
        assert set(ids[0]) | set(ids[1]) == set(scan.ids.tolist()), name
        # Whatever a worker read (Keras's look-ahead too) is its own part only.
        read = [{by_fingerprint[f] for it in w[name]["seen"]["0"] for f in it} for w in workers]
        assert read == [set(i) for i in ids], name
        if name == "tfrecord":  # file-level: each worker read whole shard files of its own
            assert not {i >> 32 for i in ids[0]} & {i >> 32 for i in ids[1]}
        assert workers[0][name]["loss"] == workers[1][name]["loss"]  # one model, trained together
    assert (tmp_path / "out" / "run-folder" / "encoder.keras").exists()


@pytest.mark.slow
def test_two_finetuning_workers_agree_on_the_loss_and_only_the_chief_writes(two_finetuning_workers):
    chief, worker = two_finetuning_workers["results"]
    assert len(chief["loss"]) == 2 and np.all(np.isfinite(chief["loss"]))
    np.testing.assert_allclose(worker["loss"], chief["loss"], rtol=1e-6)
    assert chief["distribution"].startswith("multiworker") and "2 replica(s)" in chief["distribution"]
    run_dir = two_finetuning_workers["run_dir"]
    assert (run_dir / "classifier.keras").exists() and (run_dir / "finetune.json").exists()
    assert not [p for p in run_dir.rglob("*") if "worker" in p.name]


if __name__ == "__main__":
    if sys.argv[1] == "pools":
        print(json.dumps(pool_worker_main(*sys.argv[2:])), flush=True)
    elif sys.argv[1] == "finetune":
        print(json.dumps(worker_finetune_main(*sys.argv[2:4])), flush=True)
    else:
        print(json.dumps(worker_main(*sys.argv[1:3])), flush=True)
    os._exit(0)  # skip TF's slow teardown: the result is out
