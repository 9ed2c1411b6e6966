"""`kerasssl scan MODEL SURVEY... --out candidates.csv`: rank a survey by lens probability."""

from pathlib import Path

import click

from kerasssl.cli.options import data_options


@click.command(name="scan")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("survey", nargs=-1, required=True)
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="The catalogue: CSV, or Parquet with --format parquet (or a .parquet name).")
@click.option("--top", type=click.IntRange(min=1), default=None, help="Keep the K most probable lenses only.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Keep rows with lens_probability >= P only.")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default=None,
              help="Catalogue format (default: parquet for a .parquet/.pq name, else csv).")
@click.option("--embeddings", type=click.Path(path_type=Path), default=None,
              help="Also write the encoder's features as an .npy, row i = the catalogue's row i.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per model call.")
@click.option("--resume", is_flag=True, default=False,
              help="Continue a scan that was stopped (its OUT.work/ folder), without redoing what it scored.")
@click.option("--skip-bad", is_flag=True, default=False,
              help="Skip unreadable files/records (listed in OUT.skipped.txt) instead of stopping at the first.")
@click.option("--lens-class", default=None,
              help="The lens class of a multi-class model (default: class 1 of a binary model).")
@click.option("--quiet", "-q", is_flag=True, default=False, help="No progress bar and no summary line.")
@data_options
def scan(model, survey, out, top, threshold, fmt, embeddings, batch_size, resume, skip_bad, lens_class,
         quiet, allow_pickle, channel_axis):
    """Score every image of SURVEY with MODEL; write the candidates, most probable lens first.

    MODEL: a .keras classifier, a SavedModel (a version folder, or BASE/NAME
    for its latest version) or a .tflite file. SURVEY: folders (every .npy /
    FITS file at any depth, labelled or not), image files, file lists (.txt,
    one path a line) or TFRecord shards (a glob, a shard, a folder of shards).
    Files are read as `kerasssl predict` reads them (NaN repaired inside the
    model). Columns: id (the path relative to SURVEY, or shard:record),
    lens_probability, and p_<class> for the other classes of a multi-class
    model. A killed scan continues with --resume.
    """
    from kerasssl.scan import scan_survey

    result = scan_survey(model, list(survey), out, top=top, threshold=threshold, fmt=fmt, embeddings=embeddings,
                         batch_size=batch_size, resume=resume, skip_bad=skip_bad, lens_class=lens_class,
                         channel_axis=channel_axis or "auto", allow_pickle=bool(allow_pickle),
                         progress=False if quiet else None)
    if not quiet:
        line = (f"scanned {result.scanned} image(s) ({result.images_per_second:.0f} images/s); "
                f"wrote {result.rows} row(s) to {result.out}")
        if result.embeddings is not None:
            line += f", embeddings to {result.embeddings}"
        if result.skipped:
            line += f"; skipped {len(result.skipped)} unreadable, listed in {result.skipped_file}"
        click.echo(line, err=True)
