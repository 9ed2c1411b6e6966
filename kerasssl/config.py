"""One config object per run, saved as YAML in the run directory.

Every option a command accepts has a home here, so a run can be replayed
exactly with ``--config RUN/config.yaml``. Sections mirror the pipeline:
``data -> pretrain -> finetune -> evaluate -> export``.

Example:
    >>> cfg = RunConfig.from_dict({"pretrain": {"method": "byol", "epochs": 5}})
    >>> cfg = cfg.with_overrides({"pretrain.batch_size": 128})
    >>> cfg.save("run/config.yaml"); RunConfig.load("run/config.yaml") == cfg
    True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from kerasssl.errors import KerassslError


#: Values of data.channel_axis: decide from the data, (C, H, W) or (H, W, C).
CHANNEL_AXES = ("auto", "first", "last")


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
        val_fraction / test_fraction: stratified held-out fractions.
        seed: split seed.
    """

    image_size: Optional[int] = None
    nan_policy: str = "median"
    normalization: str = "asinh"
    allow_pickle: bool = False
    channel_axis: str = "auto"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self):
        if self.channel_axis not in CHANNEL_AXES:
            raise KerassslError(f"data.channel_axis must be one of {', '.join(CHANNEL_AXES)}, "
                                f"got {self.channel_axis!r}")

    def read_options(self) -> dict:
        """The keyword arguments of ``kerasssl.data.load.load_images`` this section sets."""
        return {"image_size": self.image_size, "allow_pickle": self.allow_pickle,
                "channel_axis": self.channel_axis}


@dataclass
class PretrainConfig:
    """Self-supervised pretraining.

    Args:
        method: a name of ``kerasssl.methods.available()`` (the registry;
            ``kerasssl pretrain --help`` lists them).
        encoder: a name of ``kerasssl.encoders.available()``.
        encoder_weights: optional path to a weights file for the encoder.
        method_options: keyword arguments of the method class (temperature,
            projection sizes, EMA decay, loss weights, ...).
        augment: view-pipeline overrides for ``kerasssl.layers.views``.
        precision: Keras dtype policy: float32, mixed_float16, mixed_bfloat16.
        jit_compile: "auto" (on for GPU/TPU, off on CPU where XLA is slower),
            or true/false.
        strategy / cpu_devices: data parallelism (see ``kerasssl.distribute``).
        sync_batchnorm: with several replicas, BatchNorm statistics over the
            global batch. Off by default: tracing an all-reduce per BN layer
            is quadratic in graph size on TF (EfficientNet-B0 on 2 logical
            CPUs did not finish tracing in 15 minutes).
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


@dataclass
class FinetuneConfig:
    """Supervised fine-tuning on a fraction of the labels.

    Args:
        mode: "linear" (frozen encoder), "full" (encoder at a lower learning
            rate), or "supervised" (same architecture from random weights).
        labels_fraction: fraction of the training split whose labels are used
            (stratified, seeded); the rest stays unlabeled.
        encoder_lr_scale: encoder learning rate = learning_rate * this (full).
        class_weight: "balanced" or "none".
        augment: light augmentation during fine-tuning (dihedral flips).
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


@dataclass
class EvaluateConfig:
    """Evaluation on a held-out split.

    Args:
        split: which split of ``split.json`` to evaluate on.
        bootstrap: bootstrap resamples for the ROC-AUC confidence interval.
        allow_overlap: evaluate even if files were used in training (the
            report then says so).
        prevalence: lenses per survey image (0.001: 1 in 1,000) at which the
            report states the precision of the top of a survey.
    """

    split: str = "test"
    bootstrap: int = 1000
    allow_overlap: bool = False
    prevalence: float = 0.001


@dataclass
class ExportConfig:
    """Export after `fit` (SavedModel in TF Serving layout, optional TFLite)."""

    enabled: bool = True
    name: str = "lens_finder"
    base_dir: Optional[str] = None  # default: RUN/saved_models
    tflite: Optional[str] = None  # fp32 | fp16 | int8


@dataclass
class RunConfig:
    """Everything one run needs; saved as ``RUN/config.yaml``."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    # -- conversion --------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Optional[dict], source: str = "config") -> "RunConfig":
        d = dict(d or {})
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            value = d.pop(f.name)
            sub = _SECTIONS.get(f.name)
            if sub is not None:
                kwargs[f.name] = _build_section(sub, value, f"{source}: {f.name}")
            else:
                kwargs[f.name] = value
        if d:
            raise KerassslError(f"{source}: unknown key(s) {sorted(d)}")
        return cls(**kwargs)

    def save(self, path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        tmp.replace(path)

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
        if raw is not None and not isinstance(raw, dict):
            raise KerassslError(f"{path}: expected a mapping of sections at top level")
        return cls.from_dict(raw, source=str(path))

    def with_overrides(self, overrides: dict) -> "RunConfig":
        """Return a copy with dotted keys replaced, e.g. ``{"pretrain.epochs": 3}``.

        ``None`` values are ignored, so CLI options that were not given leave
        the config untouched.
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


def _build_section(cls, value, source):
    if value is None:
        return cls()
    if not isinstance(value, dict):
        raise KerassslError(f"{source}: expected a mapping")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise KerassslError(f"{source}: unknown key(s) {unknown}")
    return cls(**value)
