"""One config object per run, saved as YAML in the run directory.

Every option a command accepts has a home here, so a run can be replayed
exactly with ``--config RUN/config.yaml``. Sections mirror the pipeline:
``data -> pretrain -> finetune -> evaluate -> export``.

Example:
    >>> cfg = RunConfig.from_dict({"pretrain": {"method": "byol", "epochs": 5}})
    >>> cfg = cfg.with_overrides({"pretrain.batch_size": 128})
    >>> cfg.save("run/config.yaml"); RunConfig.load("run/config.yaml") == cfg
    True
    >>> RunConfig.from_dict({"finetune": {"labels_fraction": 0}})
    Traceback (most recent call last):
    kerasssl.errors.KerassslError: finetune.labels_fraction must be in (0, 1], got 0

The sets of allowed values (``PRECISIONS``, ``NAN_POLICIES``, ``FINETUNE_MODES``,
...) are defined here once; the modules that act on them import them.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from kerasssl.errors import KerassslError
from kerasssl.rundir import RunDir, write_text_atomic


# -- the vocabularies: every set of allowed values, defined once ------------------------
#: data.channel_axis: decide from the data, (C, H, W) or (H, W, C).
CHANNEL_AXES = ("auto", "first", "last")
#: data.nan_policy: what replaces a NaN/Inf pixel (see kerasssl.data.clean).
NAN_POLICIES = ("zero", "median", "mean")
#: data.normalization (see kerasssl.data.clean).
NORMALIZATIONS = ("none", "minmax", "zscore", "asinh", "dataset")
#: pretrain.precision: Keras dtype policies.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
#: pretrain.strategy (see kerasssl.distribute).
STRATEGIES = ("none", "mirrored", "multiworker")
#: pretrain.jit_compile, as written in YAML or on a command line.
JIT_COMPILE_TRUE = ("true", "1", "yes", "on")
JIT_COMPILE_FALSE = ("false", "0", "no", "off")
#: finetune.mode (see kerasssl.classifier).
FINETUNE_MODES = ("linear", "full", "supervised")
#: finetune.class_weight.
CLASS_WEIGHTS = ("balanced", "none")
#: The parts of a recorded split (RUN/split.json, see kerasssl.data.split).
SPLIT_NAMES = ("train", "val", "test", "labeled", "unlabeled")
#: evaluate.split: a recorded part, or "all" (every file in DATA).
EVALUATE_SPLITS = ("test", "val", "train", "labeled", "unlabeled", "all")
#: export.tflite (see kerasssl.tflite).
TFLITE_MODES = ("fp32", "fp16", "int8")


@dataclass
class DataConfig:
    """How files become model inputs.

    Args:
        image_size: centre-crop every image to this many pixels a side
            (never padded: padding could invent arc-like edges; a smaller image
            is refused). Required when files differ in size. None keeps the
            files' size.
        nan_policy: how NaN/Inf pixels are repaired: "zero", "median"
            (per-image, per-band median of finite pixels) or "mean".
        normalization: "none", "minmax" (per image), "zscore" (per image),
            "asinh" (per-image robust scale then arcsinh stretch) or
            "dataset" (per-band mean/std of the training split).
        allow_pickle: read object arrays (e.g. DeepLense axion `[image, mass]`);
            only for files you trust.
        channel_axis: which axis of stored 3-D arrays holds the bands:
            "auto" (decided from all files: the axis whose size is small and
            the same in every file), "first" (C, H, W) or "last" (H, W, C).
        val_fraction: stratified fraction of each class held out for
            validation, in [0, 1).
        test_fraction: stratified fraction of each class held out for the
            test split, in [0, 1); val_fraction + test_fraction < 1.
        seed: seed of the split (file names are ranked by a seeded hash).
        group_by: a regular expression whose first group is the object id in a
            file's base name (``re.search``; e.g. ``^(?:nl_)?(\\d+)_`` for
            ``7_hst.npy`` / ``nl_7_hst.npy``): files with the same id (cutouts of
            one object, in any class) fall wholly in train, val or test (see
            :mod:`kerasssl.data.groups`). None: every file is its own group.
        groups: instead of ``group_by``, a CSV file with columns ``file,group``
            (``file`` as ``split.json`` names it: relative to the data folder,
            ``/`` separators), one row per data file; the CSV's own path is
            relative to the current directory, like every path of the config.
            Checked against the data when the split is made (every stage checks
            it before its first write); ``split.json`` records its sha256.
    """

    image_size: Optional[int] = None
    nan_policy: str = "median"
    normalization: str = "asinh"
    allow_pickle: bool = False
    channel_axis: str = "auto"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    group_by: Optional[str] = None
    groups: Optional[str] = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise a one-line KerassslError naming the first ``data.*`` key that cannot work."""
        if self.image_size is not None and not _is_positive_int(self.image_size):
            raise KerassslError(f"data.image_size (--image-size) must be a positive integer or null, "
                                f"got {self.image_size!r}")
        _check_choice("data.nan_policy", self.nan_policy, NAN_POLICIES)
        _check_choice("data.normalization", self.normalization, NORMALIZATIONS)
        _check_bool("data.allow_pickle", self.allow_pickle)
        _check_choice("data.channel_axis", self.channel_axis, CHANNEL_AXES)
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            if not (_is_number(value) and 0.0 <= value < 1.0):
                raise KerassslError(f"data.{key} must be in [0, 1), got {value!r}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise KerassslError(f"data.val_fraction + data.test_fraction must be < 1, "
                                f"got {self.val_fraction} + {self.test_fraction}")
        _check_int("data.seed", self.seed)
        _check_grouping(self.group_by, self.groups)

    def read_options(self) -> dict:
        """The keyword arguments of ``kerasssl.data.load.load_images`` this section sets."""
        return {"image_size": self.image_size, "allow_pickle": self.allow_pickle,
                "channel_axis": self.channel_axis}


@dataclass
class PretrainConfig:
    """Self-supervised pretraining.

    The method and encoder names are checked against their registries by
    ``kerasssl.pretrain.check_components`` (the registries need Keras; this
    module does not).

    Args:
        method: a name of ``kerasssl.methods.available()`` (the registry;
            ``kerasssl pretrain --help`` lists them).
        encoder: a name of ``kerasssl.encoders.available()``.
        encoder_weights: optional path to a weights file for the encoder.
        epochs: total training epochs (on resume, may only be raised).
        batch_size: images per optimizer step (the global batch under a
            distribution strategy).
        steps_per_epoch: optimizer steps per epoch; None for one pass over the
            train split (full batches only).
        learning_rate: peak learning rate of the warmup-cosine schedule (AdamW).
        weight_decay: AdamW decoupled weight decay (not on biases and
            BatchNorm parameters).
        warmup_epochs: epochs of linear learning-rate warmup (may be fractional).
        precision: Keras dtype policy: float32, mixed_float16, mixed_bfloat16.
        jit_compile: "auto" (on for GPU/TPU, off on CPU where XLA is slower),
            or true/false.
        method_options: keyword arguments of the method class (temperature,
            projection sizes, EMA decay, loss weights, ...).
        augment: view-pipeline overrides for ``kerasssl.layers.views``.
        strategy: data parallelism, "none", "mirrored" or "multiworker" (see
            ``kerasssl.distribute``).
        cpu_devices: split the CPU into this many logical devices (for
            ``mirrored`` without GPU, and for tests); None leaves it whole.
        sync_batchnorm: with several replicas, BatchNorm statistics over the
            global batch. Off by default: tracing an all-reduce per BN layer
            is quadratic in graph size on TF (EfficientNet-B0 on 2 logical
            CPUs did not finish tracing in 15 minutes).
        knn_monitor: a k-NN probe ROC-AUC on the validation split after each
            epoch (``val_knn_auc`` in the history), when both have two classes; with
            ``recalibrate_batchnorm``, on the encoder with recomputed BatchNorm
            statistics, as it would be saved.
        unlabeled: unlabeled pools to pretrain on besides the labelled train
            split (``--unlabeled``): folders of .npy/FITS cutouts at any depth
            or TFRecord globs (see ``kerasssl.data.pool``); streamed, never loaded whole.
        shuffle_buffer: records held in each TFRecord pool's shuffle buffer (the
            memory bound of streaming; folder pools need none).
        skip_bad: skip unreadable pool files, count them and list them in
            ``RUN/skipped_files.txt`` (``--skip-bad``); default: one bad file stops the run.
        checkpoint_every: also checkpoint every this many steps within an epoch
            (``--checkpoint-every``; 0 = at epoch ends only): for long epochs,
            ``--resume`` then continues from the step, with the same data order.
        recalibrate_batchnorm: after the last epoch, recompute the encoder's
            BatchNorm statistics over (at most 4096 of) the train split and the
            pools' sample, with the final weights
            (:func:`kerasssl.batchnorm.recalibrate_batch_norm`). The moving
            averages of a short run are mostly their initial values: in inference
            mode a B0 then gives every image nearly the same features.
        debug_nans: check every tensor of each train step (views, features,
            projections, loss terms, gradients, updated weights) and stop at the
            first non-finite one, naming it (``--debug-nans``, see
            :mod:`kerasssl.nandebug`); one device only. Off: no cost.
    """

    method: str = "simclr"
    encoder: str = "efficientnetb0"
    encoder_weights: Optional[str] = None
    epochs: int = 10
    batch_size: int = 64
    steps_per_epoch: Optional[int] = None
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    precision: str = "float32"
    jit_compile: Any = "auto"
    method_options: dict = field(default_factory=dict)
    augment: dict = field(default_factory=dict)
    strategy: str = "none"
    cpu_devices: Optional[int] = None
    sync_batchnorm: bool = False
    knn_monitor: bool = True
    unlabeled: list = field(default_factory=list)
    shuffle_buffer: int = 2048
    skip_bad: bool = False
    checkpoint_every: int = 0
    recalibrate_batchnorm: bool = True
    debug_nans: bool = False

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise a one-line KerassslError naming the first ``pretrain.*`` key that cannot work."""
        for key in ("method", "encoder"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise KerassslError(f"pretrain.{key} must be a name, got {value!r}")
        if self.encoder_weights is not None and not isinstance(self.encoder_weights, str):
            raise KerassslError(f"pretrain.encoder_weights must be a file path or null, got {self.encoder_weights!r}")
        _check_positive_int("pretrain.epochs", self.epochs)
        _check_positive_int("pretrain.batch_size", self.batch_size)
        if self.steps_per_epoch is not None:
            _check_positive_int("pretrain.steps_per_epoch", self.steps_per_epoch)
        _check_number("pretrain.learning_rate", self.learning_rate, positive=True)
        _check_number("pretrain.weight_decay", self.weight_decay)
        _check_number("pretrain.warmup_epochs", self.warmup_epochs)
        _check_choice("pretrain.precision", self.precision, PRECISIONS)
        parse_jit_compile(self.jit_compile)
        for key in ("method_options", "augment"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, dict):
                raise KerassslError(f"pretrain.{key} must be a mapping, got {value!r}")
        strategy = "none" if self.strategy is None else self.strategy
        if not isinstance(strategy, str) or strategy.lower() not in STRATEGIES:
            raise KerassslError(f"pretrain.strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.cpu_devices is not None:
            _check_positive_int("pretrain.cpu_devices", self.cpu_devices)
        _check_bool("pretrain.sync_batchnorm", self.sync_batchnorm)
        _check_bool("pretrain.knn_monitor", self.knn_monitor)
        unlabeled = [self.unlabeled] if isinstance(self.unlabeled, str) else self.unlabeled
        if not isinstance(unlabeled, (list, tuple)) or not all(isinstance(p, str) and p for p in unlabeled):
            raise KerassslError(f"pretrain.unlabeled must be a list of folders or TFRecord globs, "
                                f"got {self.unlabeled!r}")
        if len(set(unlabeled)) != len(unlabeled):
            raise KerassslError(f"pretrain.unlabeled names a pool twice: {list(unlabeled)}")
        _check_positive_int("pretrain.shuffle_buffer", self.shuffle_buffer)
        _check_bool("pretrain.skip_bad", self.skip_bad)
        if not _is_int(self.checkpoint_every) or self.checkpoint_every < 0:
            raise KerassslError(f"pretrain.checkpoint_every must be a step count >= 0 (0 = epoch ends only), "
                                f"got {self.checkpoint_every!r}")
        _check_bool("pretrain.recalibrate_batchnorm", self.recalibrate_batchnorm)
        _check_bool("pretrain.debug_nans", self.debug_nans)
        if self.debug_nans and strategy.lower() != "none":
            # Keras combines per-replica step outputs, which would blur "the first tensor".
            raise KerassslError(f"pretrain.debug_nans runs on one device; drop pretrain.strategy: {strategy} "
                                "(--strategy) to debug")


@dataclass
class FinetuneConfig:
    """Supervised fine-tuning on a fraction of the labels.

    Args:
        mode: "linear" (frozen encoder), "full" (encoder at a lower learning
            rate), or "supervised" (same architecture from random weights).
        labels_fraction: fraction of the training split whose labels are used,
            in (0, 1] (stratified, seeded); the rest stays unlabeled.
        epochs: passes over the labelled subset (the epoch with the best
            validation ROC-AUC is kept).
        batch_size: labelled images per step.
        learning_rate: head (and supervised) learning rate, cosine-decayed.
        encoder_lr_scale: encoder learning rate = learning_rate * this (full).
        weight_decay: decoupled weight decay on kernels.
        class_weight: "balanced" (weights n / (K * n_k) over the labelled
            subset) or "none".
        augment: light augmentation during fine-tuning (dihedral flips).
        seed: seed of the initialisation, shuffling and augmentation.
        precision: Keras dtype policy of the encoder while fine-tuning:
            float32, mixed_float16, mixed_bfloat16 (the head, its softmax and
            the loss stay float32; the saved classifier is float32). The
            devices are ``pretrain.strategy`` / ``pretrain.cpu_devices``: one
            process has one device set-up, which fine-tuning shares.
    """

    mode: str = "linear"
    labels_fraction: float = 1.0
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    encoder_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    class_weight: str = "balanced"
    augment: bool = True
    seed: int = 0
    precision: str = "float32"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise a one-line KerassslError naming the first ``finetune.*`` key that cannot work."""
        _check_choice("finetune.mode", self.mode, FINETUNE_MODES)
        if not (_is_number(self.labels_fraction) and 0.0 < self.labels_fraction <= 1.0):
            raise KerassslError(f"finetune.labels_fraction must be in (0, 1], got {self.labels_fraction!r}")
        _check_positive_int("finetune.epochs", self.epochs)
        _check_positive_int("finetune.batch_size", self.batch_size)
        _check_number("finetune.learning_rate", self.learning_rate, positive=True)
        _check_number("finetune.encoder_lr_scale", self.encoder_lr_scale)
        _check_number("finetune.weight_decay", self.weight_decay)
        _check_choice("finetune.class_weight", self.class_weight, CLASS_WEIGHTS)
        _check_bool("finetune.augment", self.augment)
        _check_int("finetune.seed", self.seed)
        _check_choice("finetune.precision", self.precision, PRECISIONS)


@dataclass
class EvaluateConfig:
    """Evaluation on a held-out split.

    Args:
        split: which split of ``split.json`` to evaluate on (test, val, train,
            labeled, unlabeled), or "all" of DATA.
        bootstrap: bootstrap resamples for the ROC-AUC confidence interval
            (at least 10).
        allow_overlap: evaluate even if files were used in training (the
            report then says so).
        prevalence: lenses per survey image (0.001: 1 in 1,000) at which the
            report states the precision of the top of a survey.
    """

    split: str = "test"
    bootstrap: int = 1000
    allow_overlap: bool = False
    prevalence: float = 0.001

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise a one-line KerassslError naming the first ``evaluate.*`` key that cannot work."""
        _check_choice("evaluate.split", self.split, EVALUATE_SPLITS)
        if not _is_positive_int(self.bootstrap) or self.bootstrap < 10:
            raise KerassslError(f"evaluate.bootstrap (--bootstrap) must be an integer of at least 10 resamples, "
                                f"got {self.bootstrap!r}")
        _check_bool("evaluate.allow_overlap", self.allow_overlap)
        if isinstance(self.prevalence, bool) or not (_is_number(self.prevalence) and 0.0 < self.prevalence < 1.0):
            raise KerassslError(f"evaluate.prevalence (--prevalence) must be a fraction in (0, 1), e.g. 0.001, "
                                f"got {self.prevalence!r}")


@dataclass
class ExportConfig:
    """Export after `fit` (SavedModel in TF Serving layout, optional TFLite).

    Args:
        enabled: export at the end of ``fit``.
        name: the model's folder under ``base_dir`` (what TF Serving serves).
        base_dir: the model base path; None for ``RUN/saved_models``.
        tflite: also write a TFLite file: "fp32", "fp16", "int8", or null.
    """

    enabled: bool = True
    name: str = "lens_finder"
    base_dir: Optional[str] = None
    tflite: Optional[str] = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise a one-line KerassslError naming the first ``export.*`` key that cannot work."""
        _check_bool("export.enabled", self.enabled)
        if not self.enabled:
            return
        check_model_name(self.name, "export.name")
        if self.base_dir is not None and not isinstance(self.base_dir, str):
            raise KerassslError(f"export.base_dir must be a folder path or null, got {self.base_dir!r}")
        if self.tflite is not None and self.tflite not in TFLITE_MODES:
            raise KerassslError(f"export.tflite must be one of {', '.join(TFLITE_MODES)} or null, "
                                f"got {self.tflite!r}")


def _check_grouping(group_by, groups) -> None:
    """data.group_by: a regex with a group for the object id; data.groups: a path; not both."""
    if group_by is not None:
        if not isinstance(group_by, str) or not group_by:
            raise KerassslError(f"data.group_by (--group-by) must be a regular expression or null, got {group_by!r}")
        try:
            pattern = re.compile(group_by)
        except re.error as e:
            raise KerassslError(f"data.group_by (--group-by) is not a valid regular expression ({e}): "
                                f"{group_by!r}") from None
        if pattern.groups < 1:
            raise KerassslError(f"data.group_by (--group-by) needs a group (...) around the object id, "
                                f"e.g. '^(?:nl_)?(\\d+)_', got {group_by!r}")
    if groups is not None and (not isinstance(groups, str) or not groups):
        raise KerassslError(f"data.groups (--groups) must be a CSV file path or null, got {groups!r}")
    if group_by is not None and groups is not None:
        raise KerassslError("data.group_by (--group-by) and data.groups (--groups) both given; "
                            "group the files by one of them")


def check_model_name(name, key="export.name") -> str:
    """Refuse an exported model's name that is not a plain folder name (TF Serving's model name)."""
    if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name:
        raise KerassslError(f"{key} must be a plain folder name (no '/', not starting with '.'), got {name!r}")
    return name


def parse_jit_compile(value):
    """``pretrain.jit_compile`` as True, False or "auto" (KerassslError for anything else)."""
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in JIT_COMPILE_TRUE:
        return True
    if text in JIT_COMPILE_FALSE:
        return False
    if text != "auto":
        raise KerassslError(f"pretrain.jit_compile must be auto, true or false, got {value!r}")
    return "auto"


@dataclass
class RunConfig:
    """Everything one run needs; saved as ``RUN/config.yaml``.

    Every section checks its values when it is built (``validate()``, one
    line naming the key), and so does a RunConfig made by :meth:`from_dict`,
    :meth:`load` or :meth:`with_overrides`: an API user gets the CLI's checks.
    Call :meth:`validate` again after changing a field in place.

    Args:
        seed: seed of the model initialisation and augmentation.
        data: :class:`DataConfig`.
        pretrain: :class:`PretrainConfig`.
        finetune: :class:`FinetuneConfig`.
        evaluate: :class:`EvaluateConfig`.
        export: :class:`ExportConfig`.
    """

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self):
        _check_int("seed", self.seed)
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise KerassslError(f"{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")

    def validate(self) -> "RunConfig":
        """Check every section again (after in-place changes); returns the config."""
        _check_int("seed", self.seed)
        for name in _SECTIONS:
            getattr(self, name).validate()
        return self

    # -- conversion --------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: Optional[dict], source: Optional[str] = None) -> "RunConfig":
        """Build and check a config; ``source`` (e.g. the YAML file) prefixes every error."""
        where = f"{source}: " if source else ""
        d = dict(d or {})
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            value = d.pop(f.name)
            sub = _SECTIONS.get(f.name)
            if sub is not None:
                kwargs[f.name] = _build_section(sub, value, f"{where}{f.name}", where)
            else:
                kwargs[f.name] = value
        if d:
            raise KerassslError(f"{where or 'config: '}unknown key(s) {sorted(d)}")
        try:
            return cls(**kwargs)
        except KerassslError as e:
            raise KerassslError(f"{where}{e}") from None

    def save(self, path) -> None:
        """Write the YAML atomically (a reader never sees half of it)."""
        write_text_atomic(path, self.to_yaml())

    @classmethod
    def load(cls, path) -> "RunConfig":
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise KerassslError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            line = getattr(getattr(e, "problem_mark", None), "line", None)
            where = f" (line {line + 1})" if line is not None else ""
            raise KerassslError(f"{path}: not valid YAML{where}") from None
        except OSError as e:
            raise KerassslError(f"{path}: cannot read the config ({e.strerror or type(e).__name__})") from None
        if raw is not None and not isinstance(raw, dict):
            raise KerassslError(f"{path}: expected a mapping of sections at top level")
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_run(cls, run_dir) -> Optional["RunConfig"]:
        """The config a run directory holds (``RUN/config.yaml``), or None for a run without one."""
        path = RunDir(run_dir).config
        return cls.load(path) if path.exists() else None

    def with_overrides(self, overrides: dict) -> "RunConfig":
        """Return a copy with dotted keys replaced, e.g. ``{"pretrain.epochs": 3}``.

        ``None`` values are ignored, so CLI options that were not given leave
        the config untouched. The result is checked like any new config.
        """
        d = self.to_dict()
        for key, value in overrides.items():
            if value is None:
                continue
            node = d
            *parents, leaf = key.split(".")
            for p in parents:
                if p not in node or not isinstance(node[p], dict):
                    raise KerassslError(f"unknown config key {key!r}")
                node = node[p]
            if leaf not in node and not _is_free_dict(parents):
                raise KerassslError(f"unknown config key {key!r}")
            node[leaf] = value
        return RunConfig.from_dict(d)


_SECTIONS = {
    "data": DataConfig,
    "pretrain": PretrainConfig,
    "finetune": FinetuneConfig,
    "evaluate": EvaluateConfig,
    "export": ExportConfig,
}


def _is_free_dict(parents):
    # method_options / augment accept any key.
    return len(parents) == 2 and parents[1] in ("method_options", "augment")


def _build_section(cls, value, source, where):
    if value is None:
        return cls()
    if not isinstance(value, dict):
        raise KerassslError(f"{source}: expected a mapping")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise KerassslError(f"{source}: unknown key(s) {unknown}")
    try:
        return cls(**value)
    except KerassslError as e:
        raise KerassslError(f"{where}{e}") from None


# -- value checks (one wording for every key) ----------------------------------------
# numbers.Integral / Real take NumPy scalars too, without importing NumPy here.
def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_positive_int(value) -> bool:
    return _is_int(value) and value >= 1


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(key, value) -> None:
    if not _is_int(value):
        raise KerassslError(f"{key} must be an integer, got {value!r}")


def _check_positive_int(key, value) -> None:
    if not _is_positive_int(value):
        raise KerassslError(f"{key} must be a positive integer, got {value!r}")


def _check_number(key, value, positive=False) -> None:
    """A finite number, > 0 (``positive``) or >= 0."""
    if not _is_number(value) or (value <= 0 if positive else value < 0):
        raise KerassslError(f"{key} must be a {'positive' if positive else 'non-negative'} number, got {value!r}")


def _check_bool(key, value) -> None:
    if not isinstance(value, bool) and type(value).__name__ != "bool_":  # NumPy's bool too
        raise KerassslError(f"{key} must be true or false, got {value!r}")


def _check_choice(key, value, choices) -> None:
    if value not in choices:
        raise KerassslError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
