"""`kerasssl export MODEL --name NAME`: TF Serving SavedModel (+ TFLite) of a classifier."""

from pathlib import Path

import click

from kerasssl.config import TFLITE_MODES


@click.command(name="export")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model name: the folder under --base-dir TF Serving serves.")
@click.option("--base-dir", "base_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("saved_models"), show_default=True,
              help="Model base path TF Serving watches; the version goes to BASE/NAME/<version>/.")
@click.option("--version", "version", type=click.IntRange(min=0), default=None,
              help="Version number.  [default: one more than the highest present]  "
                   "An existing version is never overwritten.")
@click.option("--tflite", type=click.Choice(TFLITE_MODES), default=None,
              help="Also write NAME_<mode>.tflite (+ a parity report) into the version folder.")
@click.option("--data", "data", type=click.Path(exists=True, path_type=Path), default=None,
              help="The run's data: int8 calibration from its train split, parity / AUC on its val split.")
@click.option("--run-dir", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="The training run (split.json, finetune.json).  [default: the model's folder if it is a run]")
def export(model, name, base_dir, version, tflite, data, run_dir):
    """Export classifier MODEL (.keras) for TF Serving as BASE/NAME/<version>/.

    Signatures: serving_default (images -> probabilities), embed (images ->
    embeddings) and, with TFRecord support, predict_examples (serialized
    tf.Example -> probabilities). Inference mode only: augmentation and dropout
    are off. The version appears atomically; on failure nothing is left behind.
    """
    from kerasssl.export import export_model

    result = export_model(model, base_dir, name, version=version, tflite=tflite, data=data, run_dir=run_dir)
    for line in result.summary_lines():
        click.echo(line)
