"""`kerasssl fit DATA --run-dir RUN`: split -> pretrain -> fine-tune -> evaluate -> export."""

from pathlib import Path

import click

from kerasssl.cli.options import (checkpoint_option, command_line, data_options, debug_nans_option,
                                  distribution_options, encoder_option, group_options, group_overrides,
                                  method_option, pool_options, pool_overrides, prevalence_option)
from kerasssl.config import FINETUNE_MODES, PRECISIONS


@click.command(name="fit")
@click.argument("data", type=click.Path(path_type=Path))  # may be a TFRecord glob
@click.option("--run-dir", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory (config, split, models, report, plot).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Run config YAML (see examples/).")
@click.option("--epochs", type=int, default=None, help="Pretraining epochs (pretrain.epochs).")
@click.option("--finetune-epochs", type=int, default=None, help="Fine-tuning epochs (finetune.epochs).")
@method_option("Self-supervised method (pretrain.method).")
@encoder_option("Backbone (pretrain.encoder); the applications need at least 32 px, `tiny` is for tests.")
@click.option("--image-size", type=int, default=None, help="Centre-crop images to this size (data.image_size).")
@click.option("--batch-size", type=int, default=None, help="Pretraining batch size (pretrain.batch_size).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Keras dtype policy for pretraining.")
@click.option("--labels-fraction", type=float, default=None, help="Fraction of the training labels to fine-tune on.")
@click.option("--mode", type=click.Choice(FINETUNE_MODES), default=None,
              help="Fine-tune mode (supervised skips pretraining).")
@click.option("--seed", type=int, default=None, help="Seed of the split, pretraining and fine-tuning.")
@click.option("--no-export", is_flag=True, default=False, help="Skip the SavedModel export.")
@prevalence_option
@checkpoint_option
@pool_options
@distribution_options
@group_options
@data_options
@debug_nans_option
def fit(data, run_dir, config_path, epochs, finetune_epochs, method, encoder, image_size, batch_size,
        precision, labels_fraction, mode, seed, no_export, prevalence, checkpoint_every, unlabeled, skip_bad,
        strategy, cpu_devices, sync_batchnorm, allow_pickle, channel_axis, group_by, groups, debug_nans):
    """The whole job on DATA: split, pretrain, fine-tune, evaluate (and export).

    With --unlabeled POOL, pretraining streams the pools with DATA's train split
    (pool images equal to a val/test image are left out); fine-tuning and
    evaluation use DATA only.

    Writes RUN/config.yaml, RUN/split.json, RUN/classifier.keras, RUN/report.json
    and RUN/roc.png (and RUN/completeness.png when DATA holds the simulator's
    metadata.csv), and prints the test ROC-AUC with its 95% CI and the TPR at
    FPR 1e-2 / 1e-3, TPR0 and TPR10.
    """
    from kerasssl.config import RunConfig
    from kerasssl.fit import fit as run_fit
    from kerasssl.fit import summary_lines
    from kerasssl.rundir import SAVED_MODELS, recorder

    cfg = RunConfig.load(config_path) if config_path else RunConfig()
    cfg = cfg.with_overrides({
        "pretrain.epochs": epochs,
        "finetune.epochs": finetune_epochs,
        "pretrain.method": method,
        "pretrain.encoder": encoder,
        "data.image_size": image_size,
        "pretrain.batch_size": batch_size,
        "pretrain.precision": precision,
        "finetune.labels_fraction": labels_fraction,
        "finetune.mode": mode,
        "seed": seed,
        "data.seed": seed,
        "finetune.seed": seed,
        "export.enabled": False if no_export else None,
        "evaluate.prevalence": prevalence,
        "pretrain.strategy": strategy,
        "pretrain.cpu_devices": cpu_devices,
        "pretrain.sync_batchnorm": sync_batchnorm,
        "pretrain.checkpoint_every": checkpoint_every,
        "data.allow_pickle": allow_pickle,
        "data.channel_axis": channel_axis,
        "pretrain.debug_nans": debug_nans,
        **pool_overrides(unlabeled, skip_bad),
        **group_overrides(group_by, groups),
    })
    # fit() checks everything (and sets up the devices) before its first write; the command
    # is recorded only once the job is accepted (a refused one writes nothing).
    accepted = recorder("fit", reads={"data": data, "config": config_path}, config=cfg,
                        moved={SAVED_MODELS: cfg.export.base_dir}, argv=command_line(),
                        without=() if cfg.export.enabled else (SAVED_MODELS,))
    summary = run_fit(cfg, data, run_dir, progress=click.echo, on_accepted=accepted)
    click.echo("")
    for line in summary_lines(summary):
        click.echo(line)
