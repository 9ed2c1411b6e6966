"""`kerasssl finetune RUN DATA`: pretrained encoder -> classifier (RUN/classifier.keras)."""

from pathlib import Path

import click

from kerasssl.cli.options import (command_line, data_options, distribution_options, encoder_option, group_options,
                                  group_overrides)
from kerasssl.config import FINETUNE_MODES, PRECISIONS


@click.command(name="finetune")
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False, path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))  # may be a TFRecord glob
@click.option("--mode", type=click.Choice(FINETUNE_MODES), default=None,
              help="linear: frozen encoder; full: encoder at a lower learning rate; "
                   "supervised: same architecture from random weights.  [default: config, linear]")
@click.option("--labels-fraction", type=float, default=None,
              help="Fraction of the training split's labels to use (stratified, seeded).  [default: 1.0]")
@click.option("--epochs", type=int, default=None, help="Fine-tuning epochs.  [default: config, 20]")
@click.option("--batch-size", type=int, default=None, help="Batch size.  [default: config, 64]")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Run config YAML.  [default: RUN/config.yaml when present]")
@encoder_option("Encoder architecture for --mode supervised (pretrain.encoder).  [default: config]")
@click.option("--seed", type=int, default=None, help="Fine-tuning seed.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the classifier.  [default: RUN/classifier.keras]")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Keras dtype policy of the encoder while fine-tuning (finetune.precision); "
                   "the saved classifier is float32.  [default: config, float32]")
@distribution_options
@group_options
@data_options
def finetune(run_dir, data, mode, labels_fraction, epochs, batch_size, config_path, encoder, seed, output,
             precision, strategy, cpu_devices, sync_batchnorm, allow_pickle, channel_axis, group_by, groups):
    """Fine-tune RUN's pretrained encoder on a labelled fraction of DATA's training split.

    For --mode supervised, RUN may be a fresh directory: the split and the
    preprocessing are then created from DATA. Writes RUN/classifier.keras and
    RUN/finetune.json (labels used, class weights, validation AUC per epoch).
    """
    from kerasssl.config import RunConfig
    from kerasssl.finetune import finetune as run_finetune
    from kerasssl.rundir import CLASSIFIER, RunDir, recorder

    run = RunDir(run_dir)
    if config_path is None and run.config.exists():
        config_path = run.config
    cfg = RunConfig.load(config_path) if config_path else RunConfig()
    # One process has one device set-up: fine-tuning uses the pretrain.strategy / cpu_devices keys.
    cfg = cfg.with_overrides({"finetune.seed": seed, "pretrain.encoder": encoder, "finetune.precision": precision,
                              "pretrain.strategy": strategy, "pretrain.cpu_devices": cpu_devices,
                              "pretrain.sync_batchnorm": sync_batchnorm,
                              "data.allow_pickle": allow_pickle, "data.channel_axis": channel_axis,
                              **group_overrides(group_by, groups)})
    pretrained = (mode or cfg.finetune.mode) != "supervised"
    # finetune() checks everything before its first write; the command is recorded only then.
    accepted = recorder("finetune", config=cfg, moved={CLASSIFIER: output}, argv=command_line(),
                        reads={"data": data, "config": config_path, "encoder": run.encoder if pretrained else None})
    record = run_finetune(cfg, data, run_dir, mode=mode, labels_fraction=labels_fraction,
                          epochs=epochs, batch_size=batch_size, output=output, on_accepted=accepted)
    best = record.get("best_val_roc_auc")
    click.echo(f"{record['mode']} fine-tune on {record['n_labeled']} labelled images "
               f"({100 * record['labels_fraction']:g}% of the training split), class weights {record['class_weight']}")
    if best is not None:
        click.echo(f"best validation ROC-AUC {best:.3f} at epoch {record['best_epoch']}")
    click.echo(f"classifier: {record['model']}")
