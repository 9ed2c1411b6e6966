"""Click options shared by several sub-commands (one definition, one help text)."""

import importlib

import click

from kerasssl.config import STRATEGIES


class RegistryChoice(click.Choice):
    """A ``click.Choice`` over a registry's names, read only when they are needed.

    The names come from ``<module>.available()`` (e.g. ``kerasssl.methods``),
    so a registered method or encoder is a valid value and is listed in
    ``--help`` without editing the CLI. Importing the registry imports Keras:
    deferring it keeps the sub-command modules light until an option is
    parsed or the sub-command's help is shown (``kerasssl --help`` never
    reads them); read each time, they include a method registered after the
    CLI was imported. Case-insensitive, ``-`` equal to ``_``, as the registries. An
    unknown name is the registry's own one-line error (exit 2), as when the
    name comes from a config file.

    Args:
        module: the registry module, with an ``available()`` function.
        kind: what the names are, for the error ("method", "encoder").

    Example:
        >>> @click.option("--method", type=RegistryChoice("kerasssl.methods", "method"))
    """

    def __init__(self, module: str, kind: str):
        self.module = module
        self.kind = kind
        self.case_sensitive = False

    @property
    def choices(self):
        return tuple(importlib.import_module(self.module).available())

    @choices.setter
    def choices(self, value):  # click assigns it in Choice.__init__ only, which is not called
        raise AttributeError("RegistryChoice's choices come from its registry")

    def normalize_choice(self, choice, ctx):
        return super().normalize_choice(choice, ctx).replace("-", "_")

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            from kerasssl.errors import KerassslError

            raise KerassslError(f"unknown {self.kind} {value!r}; choose from {', '.join(self.choices)}") from None

    def get_metavar(self, param, ctx):
        return f"[{'|'.join(numbered_runs(self.choices))}]"


def numbered_runs(names):
    """Names with runs of 3+ consecutive numbers shortened, for a readable metavar.

    Example:
        >>> numbered_runs(["b0", "b1", "b2", "resnet50", "tiny"])
        ['b0..2', 'resnet50', 'tiny']
    """
    out, run = [], []  # run: (stem, number) of consecutive names

    def flush():
        out.extend([f"{run[0][0]}{run[0][1]}..{run[-1][1]}"] if len(run) >= 3 else
                   [f"{stem}{number}" for stem, number in run])
        run.clear()

    for name in names:
        stem = name.rstrip("0123456789")
        digits = name[len(stem):]
        if not digits or (digits.startswith("0") and digits != "0"):  # no number, or one str(int) would change
            flush()
            out.append(name)
            continue
        if not (run and run[-1][0] == stem and int(digits) == run[-1][1] + 1):
            flush()
        run.append((stem, int(digits)))
    flush()
    return out


def method_option(help_text):
    """--method NAME, one of the registered SSL methods (``kerasssl.methods.available()``)."""
    return click.option("--method", type=RegistryChoice("kerasssl.methods", "method"), default=None, help=help_text)


def encoder_option(help_text):
    """--encoder NAME, one of the registered encoders (``kerasssl.encoders.available()``)."""
    return click.option("--encoder", type=RegistryChoice("kerasssl.encoders", "encoder"), default=None, help=help_text)


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


def group_options(command):
    """--group-by REGEX / --groups CSV on the commands that make a split (pretrain, finetune, fit).

    None when not given, so a run's config (data.group_by, data.groups) decides;
    a run's recorded split refuses a changed rule.
    """
    command = click.option(
        "--groups", "groups", type=click.Path(path_type=str), default=None, metavar="CSV",
        help="A CSV with columns file,group (file relative to DATA, as split.json names it; one row per "
             "data file): files of one group fall wholly in train, val or test (data.groups).")(command)
    command = click.option(
        "--group-by", "group_by", default=None, metavar="REGEX",
        help="Keep an object's cutouts on one side of the split: the regex's first group, searched in each "
             "file's base name, is the object id (data.group_by), e.g. '^(?:nl_)?(\\d+)_'. Files with one id "
             "fall wholly in train, val or test, in any class. Default: every file its own group.")(command)
    return command


def group_overrides(group_by, groups) -> dict:
    """Config overrides of --group-by / --groups."""
    return {"data.group_by": group_by, "data.groups": groups}


def distribution_options(command):
    """--strategy / --cpu-devices / --sync-batchnorm (config keys pretrain.*, used by fine-tuning too)."""
    command = click.option(
        "--sync-batchnorm/--no-sync-batchnorm", "sync_batchnorm", default=None,
        help="BatchNorm statistics over the global batch across replicas (pretrain.sync_batchnorm; "
             "off by default: slow to trace for large encoders on TF).")(command)
    command = click.option(
        "--cpu-devices", "cpu_devices", type=click.IntRange(min=1), default=None,
        help="Split the CPU into N logical devices for --strategy mirrored (pretrain.cpu_devices).")(command)
    command = click.option(
        "--strategy", type=click.Choice(STRATEGIES), default=None,
        help="Data-parallel pretraining and fine-tuning (pretrain.strategy, which fine-tuning shares): "
             "mirrored = local GPUs (or --cpu-devices; JAX: DataParallel), multiworker = "
             "MultiWorkerMirroredStrategy from TF_CONFIG.")(command)
    return command


def debug_nans_option(command):
    """--debug-nans (pretrain.debug_nans): name the first non-finite tensor of a pretraining step."""
    return click.option(
        "--debug-nans", "debug_nans", is_flag=True, default=None,
        help="Check every tensor of each pretraining step (views, encoder layers, projections, loss "
             "terms, gradients, updated weights) and stop at the first NaN/Inf one, naming it and the "
             "step (pretrain.debug_nans; one device; slower).")(command)


def pool_options(command):
    """--unlabeled POOL (repeatable) / --skip-bad on pretrain and fit (pretrain.unlabeled, pretrain.skip_bad)."""
    command = click.option(
        "--skip-bad", "skip_bad", is_flag=True, default=None,
        help="Skip unreadable pool files instead of stopping: they are counted and listed in "
             "RUN/skipped_files.txt (pretrain.skip_bad); a TFRecord shard broken mid-file gives "
             "its records up to the break. Default: one bad file stops the run, "
             "before the first step.")(command)
    command = click.option(
        "--unlabeled", "unlabeled", multiple=True, metavar="POOL",
        help="An unlabeled pool to pretrain on besides DATA's train split (repeatable; "
             "pretrain.unlabeled): a folder of .npy/FITS cutouts at any depth (folder names mean "
             "nothing) or a TFRecord glob in quotes. Streamed, never loaded whole; pool images equal "
             "to a val/test image of DATA are left out (leak guard, recorded in RUN/pools.json).")(command)
    return command


def checkpoint_option(command):
    """--checkpoint-every N on pretrain and fit (pretrain.checkpoint_every)."""
    return click.option(
        "--checkpoint-every", "checkpoint_every", type=click.IntRange(min=0), default=None, metavar="N",
        help="Also checkpoint every N steps within an epoch (pretrain.checkpoint_every; 0 = epoch ends "
             "only, the default): for long epochs, --resume then continues from that step with the "
             "same data order.")(command)


def pool_overrides(unlabeled, skip_bad) -> dict:
    """Config overrides of --unlabeled / --skip-bad (flags given replace the config's list)."""
    return {"pretrain.unlabeled": [str(p) for p in unlabeled] if unlabeled else None,
            "pretrain.skip_bad": skip_bad}
def prevalence_option(command):
    """--prevalence P (evaluate.prevalence): lenses per survey image for the report's precision."""
    return click.option(
        "--prevalence", type=float, default=None,
        help="Lenses per survey image (evaluate.prevalence; 0.001 = 1 in 1,000): the report gives the "
             "precision of the top of a survey at this prevalence.  [default: config, 0.001]")(command)
