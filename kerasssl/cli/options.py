"""Click options shared by several sub-commands (one definition, one help text)."""

import click

from kerasssl.config import STRATEGIES


def _channel_axis(ctx, param, value):
    return None if value is None else ("first" if value else "last")


def command_line() -> list:
    """The command line being run, as ``kerasssl.cli.main`` got it (for ``RUN/runs.jsonl``)."""
    import sys

    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return list(obj["argv"]) if isinstance(obj, dict) and "argv" in obj else list(sys.argv)


def data_options(command):
    """--allow-pickle / --channels-first/--channels-last on every command that reads images.

    Both are None when not given, so a run's config (data.allow_pickle,
    data.channel_axis) decides; commands without a config read None as
    "no pickle" and "auto".
    """
    command = click.option(
        "--channels-first/--channels-last", "channel_axis", default=None, callback=_channel_axis,
        help="Which axis of the stored 3-D arrays holds the bands: (C, H, W) or (H, W, C) "
             "(data.channel_axis). Default: decided from all files, the axis whose size is small "
             "and the same in every file; `kerasssl inspect` shows the choice.")(command)
    command = click.option(
        "--allow-pickle", "allow_pickle", is_flag=True, default=None,
        help="Read .npy object arrays (e.g. DeepLense axion [image, mass]) and use element 0 "
             "(data.allow_pickle). Unpickling runs code from the file: trusted files only.")(command)
    return command


def distribution_options(command):
    """--strategy / --cpu-devices / --sync-batchnorm (config keys pretrain.*)."""
    command = click.option(
        "--sync-batchnorm/--no-sync-batchnorm", "sync_batchnorm", default=None,
        help="BatchNorm statistics over the global batch across replicas (pretrain.sync_batchnorm; "
             "off by default: slow to trace for large encoders on TF).")(command)
    command = click.option(
        "--cpu-devices", "cpu_devices", type=click.IntRange(min=1), default=None,
        help="Split the CPU into N logical devices for --strategy mirrored (pretrain.cpu_devices).")(command)
    command = click.option(
        "--strategy", type=click.Choice(STRATEGIES), default=None,
        help="Data-parallel pretraining (pretrain.strategy): mirrored = local GPUs (or --cpu-devices; "
             "JAX: DataParallel), multiworker = MultiWorkerMirroredStrategy from TF_CONFIG.")(command)
    return command


def pool_options(command):
    """--unlabeled POOL (repeatable) / --skip-bad on pretrain and fit (pretrain.unlabeled, pretrain.skip_bad)."""
    command = click.option(
        "--skip-bad", "skip_bad", is_flag=True, default=None,
        help="Skip unreadable pool files instead of stopping: they are counted and listed in "
             "RUN/skipped_files.txt (pretrain.skip_bad). Default: one bad file stops the run, "
             "before the first step.")(command)
    command = click.option(
        "--unlabeled", "unlabeled", multiple=True, metavar="POOL",
        help="An unlabeled pool to pretrain on besides DATA's train split (repeatable; "
             "pretrain.unlabeled): a folder of .npy/FITS cutouts at any depth (folder names mean "
             "nothing) or a TFRecord glob in quotes. Streamed, never loaded whole; pool images equal "
             "to a val/test image of DATA are left out (leak guard, recorded in RUN/pools.json).")(command)
    return command


def pool_overrides(unlabeled, skip_bad) -> dict:
    """Config overrides of --unlabeled / --skip-bad (flags given replace the config's list)."""
    return {"pretrain.unlabeled": [str(p) for p in unlabeled] if unlabeled else None,
            "pretrain.skip_bad": skip_bad}
