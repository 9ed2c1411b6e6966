"""`kerasssl convert DATA OUT --to tfrecord`: a data folder -> sharded TFRecord (tf.Example)."""

import click

from kerasssl.cli.options import data_options


@click.command(name="convert")
@click.argument("data", type=click.Path(path_type=str))
@click.argument("out", type=click.Path(file_okay=False, path_type=str))
@click.option("--to", "to", type=click.Choice(["tfrecord"]), default="tfrecord", show_default=True,
              help="Output format.")
@click.option("--shards", type=click.IntRange(min=1), default=1, show_default=True,
              help="Number of shard files (records go round-robin, so each mixes the classes).")
@click.option("--compression", type=click.Choice(["none", "gzip"]), default="none",
              show_default=True, help="Compress the shards (files end in .tfrecord.gz).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress bar on stderr.")
@click.option("--unlabeled", is_flag=True, default=False,
              help="DATA is an unlabeled pool: every .npy/FITS file at any depth, folder names "
                   "meaning nothing; the records get no label or class_name (manifest "
                   "\"labeled\": false). Use OUT with pretrain/fit --unlabeled.")
@data_options
def convert(data, out, to, shards, compression, progress, unlabeled, allow_pickle, channel_axis):
    """Convert the data folder DATA to TFRecord files of tf.Example in the new folder OUT.

    Each record holds one file: `image` (the array exactly as stored, NaN kept,
    raw float32 bytes), `shape`, `label`, `class_name` and `filename` (path in
    DATA, so splits stay the same). OUT gets data-0000i-of-0000N.tfrecord[.gz]
    and manifest.json; it is written atomically and must not exist yet (or be
    empty). Afterwards every command takes 'OUT/*.tfrecord*' (or OUT) as DATA.
    The band axis (decided from all files, or --channels-first/--channels-last)
    is recorded in OUT/manifest.json, so readers of OUT use the same.
    """
    options = dict(shards=shards, compression=compression, allow_pickle=bool(allow_pickle),
                   progress=progress, channel_axis=channel_axis or "auto")
    if unlabeled:
        from kerasssl.data.pool import convert_pool

        manifest = convert_pool(data, out, **options)
    else:
        from kerasssl.data.tfrecord import write_tfrecords

        manifest = write_tfrecords(data, out, **options)
    counts = ", ".join(f"{name} {n}" for name, n in manifest["counts"].items())
    click.echo(f"wrote {manifest['num_records']} records ({counts}) in {manifest['shards']} "
               f"{to} shard(s) to {out}")
    empty = [name for name, n in manifest["counts"].items() if not n] if not unlabeled else []
    if empty:
        # A flat folder labels every file without the nl_ prefix a lens: an unlabeled
        # pool converted without --unlabeled becomes "all lenses" silently.
        click.echo(f"note: no {' or '.join(empty)} images, so the records are all of one class; "
                   "if DATA is an unlabeled pool, convert it with --unlabeled", err=True)
