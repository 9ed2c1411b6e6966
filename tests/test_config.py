"""kerasssl.config: every section checks its own values, one line naming the key, however it is built."""

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from kerasssl import config as C
from kerasssl.config import RunConfig
from kerasssl.errors import KerassslError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# (dotted key, a value it refuses, part of the message)
BAD = [
    ("seed", "zero", "seed must be an integer"),
    ("data.image_size", 0, "data.image_size (--image-size) must be a positive integer or null, got 0"),
    ("data.image_size", 32.5, "data.image_size"),
    ("data.nan_policy", "nearest", "data.nan_policy must be one of zero, median, mean, got 'nearest'"),
    ("data.normalization", "l2", "data.normalization must be one of"),
    ("data.allow_pickle", "yes", "data.allow_pickle must be true or false"),
    ("data.channel_axis", "middle", "data.channel_axis must be one of auto, first, last"),
    ("data.val_fraction", 1.0, "data.val_fraction must be in [0, 1), got 1.0"),
    ("data.test_fraction", -0.1, "data.test_fraction must be in [0, 1)"),
    ("data.val_fraction", 0.6, "data.val_fraction + data.test_fraction must be < 1"),  # with test 0.5 below
    ("data.seed", 1.5, "data.seed must be an integer"),
    ("pretrain.method", "", "pretrain.method must be a name"),
    ("pretrain.encoder", 3, "pretrain.encoder must be a name"),
    ("pretrain.epochs", 0, "pretrain.epochs must be a positive integer, got 0"),
    ("pretrain.batch_size", True, "pretrain.batch_size must be a positive integer"),
    ("pretrain.steps_per_epoch", -2, "pretrain.steps_per_epoch must be a positive integer"),
    ("pretrain.learning_rate", 0.0, "pretrain.learning_rate must be a positive number"),
    ("pretrain.learning_rate", "1e-3", "pretrain.learning_rate must be a positive number, got '1e-3'"),
    ("pretrain.weight_decay", -1e-4, "pretrain.weight_decay must be a non-negative number"),
    ("pretrain.warmup_epochs", float("nan"), "pretrain.warmup_epochs must be a non-negative number"),
    ("pretrain.precision", "float8", "pretrain.precision must be one of float32, mixed_float16, mixed_bfloat16"),
    ("pretrain.jit_compile", "sometimes", "pretrain.jit_compile must be auto, true or false"),
    ("pretrain.method_options", [1], "pretrain.method_options must be a mapping"),
    ("pretrain.strategy", "ring", "pretrain.strategy must be one of none, mirrored, multiworker"),
    ("pretrain.cpu_devices", 0, "pretrain.cpu_devices must be a positive integer"),
    ("pretrain.sync_batchnorm", 1, "pretrain.sync_batchnorm must be true or false"),
    ("pretrain.knn_monitor", "no", "pretrain.knn_monitor must be true or false"),
    ("finetune.mode", "probe", "finetune.mode must be one of linear, full, supervised"),
    ("finetune.labels_fraction", 0, "finetune.labels_fraction must be in (0, 1], got 0"),
    ("finetune.labels_fraction", 1.5, "finetune.labels_fraction must be in (0, 1], got 1.5"),
    ("finetune.epochs", -1, "finetune.epochs must be a positive integer, got -1"),
    ("finetune.batch_size", 0, "finetune.batch_size must be a positive integer"),
    ("finetune.learning_rate", -1.0, "finetune.learning_rate must be a positive number"),
    ("finetune.encoder_lr_scale", -0.1, "finetune.encoder_lr_scale must be a non-negative number"),
    ("finetune.class_weight", "inverse", "finetune.class_weight must be one of balanced, none"),
    ("finetune.augment", "yes", "finetune.augment must be true or false"),
    ("evaluate.split", "holdout", "evaluate.split must be one of test, val, train, labeled, unlabeled, all"),
    ("evaluate.bootstrap", 5, "evaluate.bootstrap (--bootstrap) must be an integer of at least 10 resamples"),
    ("evaluate.allow_overlap", "no", "evaluate.allow_overlap must be true or false"),
    ("export.enabled", "on", "export.enabled must be true or false"),
    ("export.name", "a/b", "export.name must be a plain folder name"),
    ("export.name", ".hidden", "export.name must be a plain folder name"),
    ("export.tflite", "int4", "export.tflite must be one of fp32, fp16, int8 or null"),
]


def _nested(key, value):
    *parents, leaf = key.split(".")
    d = {leaf: value}
    for p in reversed(parents):
        d = {p: d}
    if key == "data.val_fraction" and value == 0.6:
        d["data"]["test_fraction"] = 0.5
    return d


@pytest.mark.parametrize("key, value, message", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_every_way_of_building_a_config_checks_it(tmp_path, key, value, message):
    raw = _nested(key, value)
    with pytest.raises(KerassslError) as e:
        RunConfig.from_dict(raw)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    if key != "data.val_fraction" or value != 0.6:
        with pytest.raises(KerassslError, match=re.escape(message)):
            RunConfig().with_overrides({key: value})  # what the CLI's flags go through
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(KerassslError) as e:
        RunConfig.load(path)  # the file is named first
    assert str(e.value).startswith(f"{path}: {message}") and "\n" not in str(e.value)
    section, _, _ = key.partition(".")
    if section in C._SECTIONS:  # a section built by hand checks itself too
        with pytest.raises(KerassslError, match=re.escape(message)):
            C._SECTIONS[section](**raw[section])


def test_defaults_and_examples_are_valid():
    assert RunConfig().validate() == RunConfig()
    for path in sorted(EXAMPLES.glob("*.yaml")):
        RunConfig.load(path).validate()
    # NumPy scalars are numbers too (e.g. a fraction computed by a script).
    import numpy as np

    cfg = RunConfig.from_dict({"data": {"image_size": np.int64(32)}, "finetune": {"labels_fraction": np.float32(0.5)}})
    assert cfg.data.image_size == 32


def test_validate_catches_a_field_changed_in_place():
    cfg = RunConfig()
    cfg.finetune.labels_fraction = 0.0
    with pytest.raises(KerassslError, match=r"finetune.labels_fraction must be in \(0, 1\]"):
        cfg.validate()
    with pytest.raises(KerassslError, match="data must be a DataConfig"):
        RunConfig(data={"image_size": 32})


def test_every_field_of_every_section_is_documented():
    for cls in (C.DataConfig, C.PretrainConfig, C.FinetuneConfig, C.EvaluateConfig, C.ExportConfig, RunConfig):
        args = cls.__doc__.split("Args:", 1)[1]
        missing = [f.name for f in dataclasses.fields(cls) if not re.search(rf"^\s+{f.name}:", args, re.M)]
        assert not missing, f"{cls.__name__} does not document {missing}"


def test_each_vocabulary_has_one_home():
    from kerasssl import classifier, distribute, tflite
    from kerasssl.cli.evaluate import evaluate
    from kerasssl.cli.export import export
    from kerasssl.cli.finetune import finetune
    from kerasssl.cli.fit import fit
    from kerasssl.cli.pretrain import pretrain
    from kerasssl.data import clean, split
    from kerasssl.layers import preprocess

    assert clean.NAN_POLICIES is C.NAN_POLICIES and clean.NORMALIZATIONS is C.NORMALIZATIONS
    assert preprocess.NAN_POLICIES is C.NAN_POLICIES and preprocess.NORMALIZATIONS is C.NORMALIZATIONS
    assert distribute.STRATEGIES is C.STRATEGIES and split.SPLIT_NAMES is C.SPLIT_NAMES
    assert classifier.FINETUNE_MODES is C.FINETUNE_MODES and tflite.TFLITE_MODES is C.TFLITE_MODES
    for module, name in ((classifier, "MODES"), (tflite, "MODES")):
        assert not hasattr(module, name)  # "MODES" no longer means two things

    def choices(command, option):
        return tuple(next(p for p in command.params if p.name == option).type.choices)

    assert choices(pretrain, "precision") == choices(fit, "precision") == C.PRECISIONS
    assert choices(finetune, "mode") == choices(fit, "mode") == C.FINETUNE_MODES
    assert choices(pretrain, "strategy") == choices(fit, "strategy") == C.STRATEGIES
    assert choices(evaluate, "split") == C.EVALUATE_SPLITS and choices(export, "tflite") == C.TFLITE_MODES
    assert set(C.EVALUATE_SPLITS) == set(C.SPLIT_NAMES) | {"all"}  # a recorded part, or all of DATA


def test_jit_compile_is_parsed_once():
    assert [C.parse_jit_compile(v) for v in (True, "on", "1", False, "off", "no", "auto", "AUTO")] == \
        [True, True, True, False, False, False, "auto", "auto"]
