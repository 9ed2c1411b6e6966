"""`kerasssl pretrain [DATA] [--unlabeled POOL ...] --run-dir RUN ...`: self-supervised pretraining of an encoder."""

import sys
from pathlib import Path

import click

from kerasssl.cli.options import (checkpoint_option, command_line, data_options, debug_nans_option,
                                  distribution_options, encoder_option, group_options, group_overrides,
                                  method_option, pool_options, pool_overrides)
from kerasssl.config import PRECISIONS


@click.command(name="pretrain")
@click.argument("data", type=click.Path(path_type=Path), required=False)  # may be a TFRecord glob
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
@checkpoint_option
@pool_options
@distribution_options
@group_options
@data_options
@debug_nans_option
def pretrain(data, run_dir, method, encoder, image_size, epochs, batch_size, precision, steps_per_epoch,
             resume, config_path, seed, checkpoint_every, unlabeled, skip_bad, strategy, cpu_devices,
             sync_batchnorm, allow_pickle, channel_axis, group_by, groups, debug_nans):
    """Pretrain an encoder on DATA's train split (and unlabeled pools) with a self-supervised method.

    With --unlabeled POOL the pools are streamed with DATA's train split (never
    its val or test images); DATA may then be left out (no split, no kNN probe).

    Writes RUN/config.yaml, RUN/split.json, RUN/preprocess.json, RUN/history.json,
    RUN/checkpoints/, RUN/tensorboard/ and RUN/encoder.keras (+ RUN/pools.json with pools).
    """
    from kerasssl.config import RunConfig
    from kerasssl.pretrain import pretrain as run_pretrain
    from kerasssl.pretrain import resume_config
    from kerasssl.rundir import RunDir, recorder

    if resume:
        cfg = resume_config(run_dir, epochs, given={
            "--method": method, "--encoder": encoder, "--image-size": image_size, "--batch-size": batch_size,
            "--precision": precision, "--steps-per-epoch": steps_per_epoch, "--config": config_path,
            "--seed": seed, "--unlabeled": unlabeled or None, "--skip-bad": skip_bad,
            "--channels-first/--channels-last": channel_axis, "--group-by": group_by, "--groups": groups})
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
            **pool_overrides(unlabeled, skip_bad),
            **group_overrides(group_by, groups),
        })
    # The devices may differ on resume (another machine): flags override the saved run.
    # So may --allow-pickle: it changes which files can be read, not what is read from them;
    # --checkpoint-every: it changes when the state is saved, not what is trained;
    # and --debug-nans, a diagnostic that changes no result.
    cfg = cfg.with_overrides({"pretrain.strategy": strategy, "pretrain.cpu_devices": cpu_devices,
                              "pretrain.sync_batchnorm": sync_batchnorm, "data.allow_pickle": allow_pickle,
                              "pretrain.checkpoint_every": checkpoint_every, "pretrain.debug_nans": debug_nans})
    if data is None and not cfg.pretrain.unlabeled:
        raise click.UsageError("give DATA, or --unlabeled POOL (pretrain.unlabeled), or both")
    # pretrain() checks everything (and sets up the devices) before its first write; the command
    # is recorded only once the run is accepted, in the chief's RUN (a worker's private copy).
    history = run_pretrain(cfg, data, run_dir, resume=resume, verbose=1 if sys.stderr.isatty() else 2,
                           on_accepted=recorder("pretrain", reads={"data": data, "config": config_path,
                                                                   "unlabeled": cfg.pretrain.unlabeled or None},
                                                config=cfg, argv=command_line()),
                           progress=lambda line: click.echo(line.strip()))
    run = RunDir(run_dir)
    last = {k: v[-1] for k, v in history.items() if v}
    shown = ", ".join(f"{k} {last[k]:.4g}" for k in ("loss", "embedding_std", "val_knn_auc") if k in last)
    click.echo(f"pretrained {cfg.pretrain.encoder} with {cfg.pretrain.method} for {len(history.get('loss', []))} "
               f"epoch(s): {shown}; encoder -> {run.encoder}")
    if cfg.pretrain.unlabeled:
        from kerasssl.poolplan import recorded_pools

        record = recorded_pools(run_dir) or {}
        guard = record.get("leak_guard", {})
        guarded = (f"leak guard left out {guard.get('excluded')} equal to val/test images"
                   if guard.get("compared_with") else "no leak guard (no DATA)")
        click.echo(f"unlabeled images used: {record.get('unlabeled_images')} (+ {record.get('train_split_images')} "
                   f"of DATA's train split); {guarded}; skipped {len(record.get('skipped_files', []))} "
                   f"bad file(s); record -> {run.pools}")
