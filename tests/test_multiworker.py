"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 pretrain (and fine-tune) together.

Each worker is a fresh interpreter with its own ``TF_CONFIG`` (two free local
ports), running the same ``kerasssl.pretrain.pretrain`` call with
``pretrain.strategy = multiworker`` on the same data and the same run
directory, as on a cluster with a shared file system. Both must finish, agree
on the loss of every epoch (Keras all-reduces the logged loss), and only the
chief (worker 0) may write into the run directory. Fine-tuning (which shares
``pretrain.strategy``) is held to the same: two workers, one loss, one writer.
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
        "pretrain": {"method": "simclr", "encoder": "tiny", "epochs": 2, "steps_per_epoch": 2,
                     "batch_size": 8, "strategy": "multiworker", "knn_monitor": False,
                     "method_options": {"projection_dim": 16, "hidden_dim": 32}},
    })
    history = pretrain.pretrain(cfg, data_dir, run_dir)
    losses = history["loss"] if "loss" in history else history["history"]["loss"]
    return {"loss": [float(v) for v in losses]}


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


WORKERS = {"pretrain": worker_main, "finetune": worker_finetune_main}


def run_two_workers(tmp, job):
    data = write_class_folders(tmp / "data", {"lenses": 16, "nonlenses": 16}, size=16, channels=1)
    run_dir = tmp / "run"
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2",
                   CUDA_VISIBLE_DEVICES="", PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, __file__, job, str(data), str(run_dir)], env=env,
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
    return {"results": results, "run_dir": run_dir}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    return run_two_workers(tmp_path_factory.mktemp("mw"), "pretrain")


@pytest.fixture(scope="module")
def two_finetuning_workers(tmp_path_factory):
    return run_two_workers(tmp_path_factory.mktemp("mw_finetune"), "finetune")


def test_two_workers_finish_and_agree_on_the_loss(two_workers):
    chief, worker = two_workers["results"]
    assert len(chief["loss"]) == 2
    assert np.all(np.isfinite(chief["loss"]))
    np.testing.assert_allclose(worker["loss"], chief["loss"], rtol=1e-6)


def test_only_the_chief_writes_the_run_directory(two_workers):
    run_dir = two_workers["run_dir"]
    assert (run_dir / "encoder.keras").exists()
    assert (run_dir / "history.json").exists()
    # One invocation recorded (the chief's), and no worker leftovers.
    lines = (run_dir / "runs.jsonl").read_text().splitlines() if (run_dir / "runs.jsonl").exists() else []
    assert len(lines) <= 1
    assert not [p for p in run_dir.rglob("*") if "worker" in p.name]


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
    print(json.dumps(WORKERS[sys.argv[1]](*sys.argv[2:4])), flush=True)
    os._exit(0)  # skip TF's slow teardown: the result is out
