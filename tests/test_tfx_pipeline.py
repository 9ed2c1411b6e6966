"""The TFX pipeline: ImportExampleGen over kerasssl's shards -> Trainer (run_fn = kerasssl's
pretrain + fine-tune) -> Pusher into saved_models/NAME/VERSION.

`run_fn` imports no TFX, so it is tested here on examples laid out as ImportExampleGen writes
them (Split-<name>/data_tfrecord-00000-of-00001.gz, GZIP tf.Example records copied unchanged
from the input shards). The whole pipeline on LocalDagRunner needs tfx (marker `tfx`), and is
skipped where tfx cannot be imported.
"""

import hashlib
import importlib.util
import json
import types

import numpy as np
import pytest

from conftest import write_hst_folder

has_tfx = importlib.util.find_spec("tfx") is not None

#: Tiny on purpose: the test is of the plumbing, not of the classifier.
TINY = {"seed": 0,
        "data": {"val_fraction": 0.2, "test_fraction": 0.2},
        "pretrain": {"method": "simclr", "encoder": "tiny", "epochs": 1, "batch_size": 16, "knn_monitor": False},
        "finetune": {"mode": "full", "epochs": 1, "batch_size": 16},
        "evaluate": {"bootstrap": 10}}


def convert(folder, out, shards=2):
    from kerasssl.cli import main

    with pytest.raises(SystemExit) as e:
        main(["convert", str(folder), str(out), "--to", "tfrecord", "--shards", str(shards), "--compression", "gzip"])
    assert e.value.code == 0
    return out


def examplegen_layout(shards_dir, out, eval_buckets=2, buckets=10):
    """ImportExampleGen's output for kerasssl's shards: the records unchanged, split by a hash of
    `filename` into Split-train / Split-eval, one GZIP file each. Returns {split: [filenames]}."""
    import tensorflow as tf

    from kerasssl.data.tfrecord.shards import find_shards

    splits = {"train": [], "eval": []}
    writers = {}
    for name in splits:
        (out / f"Split-{name}").mkdir(parents=True)
        writers[name] = tf.io.TFRecordWriter(str(out / f"Split-{name}" / "data_tfrecord-00000-of-00001.gz"),
                                             options="GZIP")
    for shard in find_shards(str(shards_dir)):
        for record in tf.data.TFRecordDataset(shard, compression_type="GZIP").as_numpy_iterator():
            filename = tf.train.Example.FromString(record).features.feature["filename"].bytes_list.value[0]
            bucket = int(hashlib.sha256(filename).hexdigest(), 16) % buckets
            split = "eval" if bucket < eval_buckets else "train"
            writers[split].write(record)
            splits[split].append(filename.decode())
    for writer in writers.values():
        writer.close()
    return splits


def test_trainer_config_reads_custom_config_and_refuses_what_it_cannot_use(tmp_path):
    from kerasssl.errors import KerassslError
    from kerasssl.pipelines.tfx_trainer import one_pattern, trainer_config

    cfg = trainer_config({"config": TINY, "overrides": {"pretrain.epochs": 2, "export.enabled": False}})
    assert cfg.pretrain.epochs == 2 and cfg.pretrain.encoder == "tiny"
    assert cfg.export.enabled  # the Pusher needs the SavedModel, whatever the config says
    (tmp_path / "c.yaml").write_text("pretrain:\n  epochs: 3\n")
    assert trainer_config({"config": str(tmp_path / "c.yaml")}).pretrain.epochs == 3
    with pytest.raises(KerassslError, match="unknown custom_config"):
        trainer_config({"cfg": TINY})
    with pytest.raises(KerassslError, match="unknown config key"):
        trainer_config({"overrides": {"pretrain.epoch": 1}})
    assert one_pattern(["a/Split-train/*"], "train") == "a/Split-train/*"
    with pytest.raises(KerassslError, match="2 file patterns for the train split"):
        one_pattern(["a/*", "b/*"], "train")


@pytest.mark.slow
def test_run_fn_pretrains_and_finetunes_on_examplegen_output(tmp_path):
    from kerasssl.data.load import load_images
    from kerasssl.inference import load_survey_model
    from kerasssl.pipelines.tfx_trainer import EVAL_REPORT, RUN_DIR_NAME, run_fn

    pool = write_hst_folder(tmp_path / "hst", 20, 20, size=32, nan_files=2)
    splits = examplegen_layout(convert(pool, tmp_path / "rec"), tmp_path / "examples")
    assert len(splits["eval"]) >= 4 and len(splits["train"]) >= 24
    fn_args = types.SimpleNamespace(
        train_files=[str(tmp_path / "examples" / "Split-train" / "*")],
        eval_files=[str(tmp_path / "examples" / "Split-eval" / "*")],
        serving_model_dir=str(tmp_path / "model" / "Format-Serving"),
        model_run_dir=str(tmp_path / "model_run"),
        custom_config={"config": TINY}, train_steps=None, eval_steps=None)
    result = run_fn(fn_args)

    run_dir = tmp_path / "model_run" / RUN_DIR_NAME
    assert (run_dir / "encoder.keras").is_file() and (run_dir / "classifier.keras").is_file()  # pretrain + finetune
    split = json.loads((run_dir / "split.json").read_text())
    seen = {f for key in ("train", "val", "test") for f in split[key]}
    assert seen == set(splits["train"])  # the run split ExampleGen's train split only
    # The serving model is kerasssl's SavedModel (its signatures), the same classifier.
    served = load_survey_model(fn_args.serving_model_dir)
    assert served.kind == "saved_model" and served.has_features
    evaluation = load_images(fn_args.eval_files[0])
    want = load_survey_model(run_dir / "classifier.keras").run(evaluation.images)[0]
    np.testing.assert_allclose(served.run(evaluation.images)[0], want, atol=1e-5)
    report = json.loads((tmp_path / "model_run" / EVAL_REPORT).read_text())
    assert report["n_images"] == len(splits["eval"]) == result["eval_report"]["n_images"]
    assert report["n_test"] == report["n_images"] and 0.0 <= report["roc_auc"] <= 1.0


@pytest.mark.tfx
@pytest.mark.slow
@pytest.mark.skipif(not has_tfx, reason="tfx is not installed here (see docs/tfx.md: tfx 1.21's ml-metadata "
                                        "and tensorflow-data-validation 1.21 are not on this package index)")
def test_tfx_pipeline_on_local_dag_runner_pushes_a_servable_model(tmp_path):
    import time

    from kerasssl.inference import load_survey_model
    from kerasssl.models import existing_versions
    from kerasssl.pipelines.tfx_pipeline import run_local_pipeline

    pool = write_hst_folder(tmp_path / "hst", 20, 20, size=32)
    shards = convert(pool, tmp_path / "rec")
    started = time.perf_counter()
    pushed = run_local_pipeline(shards, tmp_path / "pipeline", tmp_path / "saved_models", config=TINY,
                                beam_pipeline_args=["--direct_num_workers=1"])
    print(f"TFX pipeline on LocalDagRunner: {time.perf_counter() - started:.0f} s")
    versions = existing_versions(tmp_path / "saved_models" / "lens_finder")
    assert len(versions) == 1 and pushed == tmp_path / "saved_models" / "lens_finder" / str(versions[0])
    model = load_survey_model(tmp_path / "saved_models" / "lens_finder")
    probabilities, _ = model.run(np.zeros((2, 32, 32, 1), np.float32))
    assert probabilities.shape == (2, 2)
