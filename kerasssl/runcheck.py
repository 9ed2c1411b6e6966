"""The checks a run makes before it writes anything into its run directory.

A command that is going to be rejected writes nothing: no run directory is
created and another run's directory (its ``runs.jsonl`` included) is left
byte-identical. So ``pretrain``, ``finetune`` and ``fit`` check, in this order,
and write only once all of it passed:

1. the config's values, a function per section (:func:`check_data_config`,
   :func:`check_evaluate_config`, :func:`check_export_config`,
   ``kerasssl.pretrain.check_config``, ``kerasssl.finetune.check_options``);
2. DATA: ``kerasssl.data.load.check_data_path``, then every pixel is read;
3. the run directory: what it holds fits this run (:func:`check_split`; the
   pretraining and checkpoint checks live in ``kerasssl.pretrain`` / ``kerasssl.fit``).

These are API functions: a Python caller of ``pretrain()`` gets the same checks
as the CLI. The CLI records its command line (``RUN/runs.jsonl``) through the
``on_accepted`` hook those functions call once everything passed.

Example:
    >>> check_data_config(cfg.data)
    >>> split = check_split("runs/a", image_set, cfg.data, labels_fraction=0.1)  # writes nothing
"""

from __future__ import annotations

from pathlib import Path

from kerasssl.errors import KerassslError


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_data_config(data_cfg) -> None:
    """Raise a one-line KerassslError for ``data`` settings that cannot work."""
    from kerasssl.data.clean import NAN_POLICIES, NORMALIZATIONS

    if data_cfg.image_size is not None and not _positive_int(data_cfg.image_size):
        raise KerassslError(f"data.image_size (--image-size) must be a positive integer or null, "
                            f"got {data_cfg.image_size!r}")
    if data_cfg.nan_policy not in NAN_POLICIES:
        raise KerassslError(f"data.nan_policy must be one of {', '.join(NAN_POLICIES)}, "
                            f"got {data_cfg.nan_policy!r}")
    if data_cfg.normalization not in NORMALIZATIONS:
        raise KerassslError(f"data.normalization must be one of {', '.join(NORMALIZATIONS)}, "
                            f"got {data_cfg.normalization!r}")
    if not isinstance(data_cfg.allow_pickle, bool):
        raise KerassslError(f"data.allow_pickle must be true or false, got {data_cfg.allow_pickle!r}")


def check_evaluate_config(evaluate_cfg) -> None:
    """Raise a one-line KerassslError for ``evaluate`` settings that cannot work."""
    from kerasssl.evaluate import SPLIT_NAMES

    if evaluate_cfg.split not in SPLIT_NAMES:
        raise KerassslError(f"evaluate.split must be one of {', '.join(SPLIT_NAMES)}, "
                            f"got {evaluate_cfg.split!r}")
    if not _positive_int(evaluate_cfg.bootstrap) or evaluate_cfg.bootstrap < 10:
        raise KerassslError(f"evaluate.bootstrap must be an integer of at least 10 resamples, "
                            f"got {evaluate_cfg.bootstrap!r}")
    from kerasssl.metrics import check_prevalence

    check_prevalence(evaluate_cfg.prevalence)


def check_export_config(export_cfg) -> None:
    """Raise a one-line KerassslError for ``export`` settings that cannot work."""
    if not export_cfg.enabled:
        return
    from kerasssl.tflite import MODES

    name = export_cfg.name
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise KerassslError(f"export.name must be a folder name (no '/'), got {name!r}")
    if export_cfg.tflite is not None and export_cfg.tflite not in MODES:
        raise KerassslError(f"export.tflite must be one of {', '.join(MODES)} or null, "
                            f"got {export_cfg.tflite!r}")


def check_split(run_dir, image_set, data_cfg, labels_fraction=None):
    """The split ``load_or_create_split`` will give this run, without writing it.

    Refuses what it refuses (a recorded split naming files absent from the data,
    bad fractions, ...), so a command can fail before its first write; call
    ``load_or_create_split`` afterwards to record it.

    Args:
        run_dir: the run directory (need not exist).
        image_set: the data.
        data_cfg: the run's ``DataConfig``.
        labels_fraction: as for ``load_or_create_split`` (None keeps the recorded one).

    Returns:
        The :class:`kerasssl.data.split.Split`.
    """
    from kerasssl.data.split import SPLIT_FILE, Split, make_split

    path = Path(run_dir) / SPLIT_FILE
    if not path.exists():
        return make_split(image_set, data_cfg.val_fraction, data_cfg.test_fraction,
                          1.0 if labels_fraction is None else labels_fraction, data_cfg.seed)
    split = Split.load(path)
    known = set(image_set.files)
    missing = [f for f in split.train + split.val + split.test if f not in known]
    if missing:
        raise KerassslError(
            f"{path}: the run's split names {len(missing)} file(s) absent from "
            f"{image_set.root} (e.g. {missing[0]}); use the run's data or a new run directory"
        )
    if labels_fraction is not None and labels_fraction != split.labels_fraction:
        split = split.with_labels_fraction(image_set, labels_fraction)
    return split
