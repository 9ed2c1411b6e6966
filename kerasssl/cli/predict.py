"""`kerasssl predict MODEL FILES_OR_DIR...`: per-file lens probabilities."""

from pathlib import Path

import click

from kerasssl.cli.options import data_options


@click.command(name="predict")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, default=False, help="Print one JSON object instead of a table.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Images per model call.")
@data_options
def predict(model, inputs, as_json, batch_size, allow_pickle, channel_axis):
    """Lens probability of every image in INPUTS with MODEL.

    MODEL: a .keras classifier, a SavedModel (a version folder, or BASE/NAME
    for its latest version) or a .tflite file. INPUTS: what `kerasssl scan`
    takes: .npy / FITS files, folders (searched recursively), file lists (.txt)
    or TFRecord shards (a glob, a shard or a folder; labelled or unlabeled, a
    record named by the file it was converted from). Files are read as the
    loader reads them (channels-first transposed: the smallest axis of each file
    holds the bands unless --channels-first/--channels-last, centre-cropped to the model's
    input, NaN repaired inside the model). Binary models print the probability
    of class 1 (lens); multi-class models print every class.
    """
    from kerasssl.predict import format_json, format_table, predict_files

    result = predict_files(model, list(inputs), batch_size=batch_size, allow_pickle=bool(allow_pickle),
                           channel_axis=channel_axis or "auto")
    click.echo(format_json(result) if as_json else format_table(result))
