"""`kerasssl pretrain DATA --run-dir RUN ...`: self-supervised pretraining of an encoder."""

import sys
from pathlib import Path

import click

from kerasssl.cli.options import data_options, distribution_options, encoder_option, method_option

PRECISIONS = ["float32", "mixed_float16", "mixed_bfloat16"]


@click.command(name="pretrain")
@click.argument("data", type=click.Path(path_type=Path))  # may be a TFRecord glob
@click.option("--run-dir", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory (config, split, checkpoints, history, encoder).")
@method_option("Self-supervised method (pretrain.method).")
@encoder_option("Backbone (pretrain.encoder); the applications need at least 32 px, `tiny` is for tests.")
@click.option("--image-size", type=int, default=None, help="Centre-crop images to S pixels (data.image_size).")
@click.option("--epochs", type=int, default=None, help="Total epochs (pretrain.epochs); with --resume, may be raised.")
@click.option("--batch-size", type=int, default=None, help="Images per step (pretrain.batch_size).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None, help="Keras dtype policy (pretrain.precision).")
@click.option("--steps-per-epoch", type=int, default=None,
              help="Optimizer steps per epoch (default: one pass over the train split).")
@click.option("--resume", is_flag=True, default=False,
              help="Continue RUN from its last checkpoint with its saved config.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Run config YAML (e.g. a previous RUN/config.yaml); flags override it.")
@click.option("--seed", type=int, default=None, help="Seed of the split, initialisation and augmentation.")
@distribution_options
@data_options
def pretrain(data, run_dir, method, encoder, image_size, epochs, batch_size, precision, steps_per_epoch,
             resume, config_path, seed, strategy, cpu_devices, sync_batchnorm, allow_pickle, channel_axis):
    """Pretrain an encoder on DATA's train split with a self-supervised method.

    Writes RUN/config.yaml, RUN/split.json, RUN/preprocess.json, RUN/history.json,
    RUN/checkpoints/, RUN/tensorboard/ and RUN/encoder.keras.
    """
    from kerasssl import distribute
    from kerasssl.config import RunConfig
    from kerasssl.errors import KerassslError
    from kerasssl.pretrain import check_config, resume_config
    from kerasssl.pretrain import pretrain as run_pretrain
    from kerasssl.data.load import check_data_path
    from kerasssl.runinfo import record_invocation

    if resume:
        changed = [name for name, value in (("--method", method), ("--encoder", encoder),
                                            ("--image-size", image_size), ("--batch-size", batch_size),
                                            ("--precision", precision), ("--steps-per-epoch", steps_per_epoch),
                                            ("--config", config_path), ("--seed", seed),
                                            ("--channels-first/--channels-last", channel_axis)) if value is not None]
        if changed:
            raise KerassslError(f"with --resume the run's saved config is used; only --epochs may be given "
                                f"(got {', '.join(changed)})")
        cfg = resume_config(run_dir, epochs)
    else:
        cfg = RunConfig.load(config_path) if config_path else RunConfig()
        cfg = cfg.with_overrides({
            "pretrain.method": method,
            "pretrain.encoder": encoder,
            "data.image_size": image_size,
            "pretrain.epochs": epochs,
            "pretrain.batch_size": batch_size,
            "pretrain.precision": precision,
            "pretrain.steps_per_epoch": steps_per_epoch,
            "seed": seed,
            "data.seed": seed,
            "data.channel_axis": channel_axis,
        })
    # The devices may differ on resume (another machine): flags override the saved run.
    # So may --allow-pickle: it changes which files can be read, not what is read from them.
    cfg = cfg.with_overrides({"pretrain.strategy": strategy, "pretrain.cpu_devices": cpu_devices,
                              "pretrain.sync_batchnorm": sync_batchnorm, "data.allow_pickle": allow_pickle})
    # Before any TF op: logical CPUs and collective ops are configured only then.
    distribute.setup(cfg.pretrain.strategy, cfg.pretrain.cpu_devices)
    check_config(cfg)  # bad settings: one line, before anything is written into RUN
    check_data_path(data)  # unreadable DATA: one line, and RUN is left untouched
    # The command line is recorded only once the run is accepted (a refused one writes nothing);
    # pretrain passes the chief RUN, a worker its private copy.
    history = run_pretrain(cfg, data, run_dir, resume=resume, verbose=1 if sys.stderr.isatty() else 2,
                           on_accepted=record_invocation)
    last = {k: v[-1] for k, v in history.items() if v}
    shown = ", ".join(f"{k} {last[k]:.4g}" for k in ("loss", "embedding_std", "val_knn_auc") if k in last)
    click.echo(f"pretrained {cfg.pretrain.encoder} with {cfg.pretrain.method} for {len(history.get('loss', []))} "
               f"epoch(s): {shown}; encoder -> {run_dir / 'encoder.keras'}")
