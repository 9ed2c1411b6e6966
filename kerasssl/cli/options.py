"""Click options shared by several sub-commands (one definition, one help text)."""

import click


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
        "--strategy", type=click.Choice(["none", "mirrored", "multiworker"]), default=None,
        help="Data-parallel pretraining (pretrain.strategy): mirrored = local GPUs (or --cpu-devices; "
             "JAX: DataParallel), multiworker = MultiWorkerMirroredStrategy from TF_CONFIG.")(command)
    return command
