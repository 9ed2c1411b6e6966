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
@click.option("--runner", type=click.Choice(["local", "beam"]), default="local", show_default=True,
              help="local: this process (resumable). beam: an Apache Beam pipeline (RunInference with a "
                   "SavedModel; CSV shards OUT-00000-of-0000N.csv; needs the Beam environment).")
@click.option("--beam-option", "beam_options", multiple=True, metavar="KEY=VALUE",
              help="A Beam pipeline option, repeatable (--runner beam): e.g. direct_num_workers=4, "
                   "runner=FlinkRunner, runner=DataflowRunner with project=..., region=..., temp_location=...")
@click.option("--num-shards", type=click.IntRange(min=0), default=0, show_default=True,
              help="CSV shards to write with --runner beam (0: the runner decides).")
@data_options
def scan(model, survey, out, top, threshold, fmt, embeddings, batch_size, resume, skip_bad, lens_class,
         quiet, runner, beam_options, num_shards, allow_pickle, channel_axis):
    """Score every image of SURVEY with MODEL; write the candidates, most probable lens first.

    MODEL: a .keras classifier, a SavedModel (a version folder, or BASE/NAME
    for its latest version) or a .tflite file. SURVEY: folders (every .npy /
    FITS file at any depth, labelled or not), image files, file lists (.txt,
    one path a line) or TFRecord shards (a glob, a shard, a folder of shards).
    Files are read as `kerasssl predict` reads them (NaN repaired inside the
    model). Columns: id (the path relative to SURVEY, or shard:record),
    lens_probability, and p_<class> for the other classes of a multi-class
    model. A killed scan continues with --resume.

    --runner beam runs the same scan as an Apache Beam pipeline (the
    DirectRunner on all CPUs here; Flink, Spark or Dataflow with
    --beam-option runner=...): MODEL must be a SavedModel; rows are not sorted
    across shards (--top K writes the K best, sorted, in one shard).
    """
    if runner == "beam":
        return _scan_with_beam(model, survey, out, top, threshold, fmt, embeddings, batch_size, resume,
                               skip_bad, lens_class, quiet, beam_options, num_shards, allow_pickle, channel_axis)
    if beam_options or num_shards:
        from kerasssl.errors import KerassslError

        raise KerassslError("--beam-option and --num-shards are for --runner beam")
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


def _scan_with_beam(model, survey, out, top, threshold, fmt, embeddings, batch_size, resume, skip_bad,
                    lens_class, quiet, beam_options, num_shards, allow_pickle, channel_axis):
    from kerasssl.errors import KerassslError
    from kerasssl.pipelines import check_saved_model, require_beam

    for given, option, why in ((resume, "--resume", "a Beam runner retries failed work itself"),
                               (embeddings, "--embeddings", "the Beam scan writes the catalogue only"),
                               (fmt == "parquet", "--format parquet", "the Beam scan writes CSV shards")):
        if given:
            raise KerassslError(f"{option} is for the local runner ({why})")
    check_saved_model(model)  # before Beam: a .keras file needs exporting in any environment
    require_beam()
    from kerasssl.pipelines.beam_scan import scan_with_beam

    result = scan_with_beam(model, list(survey), out, top=top, threshold=threshold, batch_size=batch_size,
                            skip_bad=skip_bad, lens_class=lens_class, channel_axis=channel_axis or "auto",
                            allow_pickle=bool(allow_pickle), num_shards=num_shards, beam_options=beam_options)
    if not quiet:
        line = (f"scanned {result.scanned} image(s) on Beam in {result.seconds:.1f} s; wrote {result.rows} row(s) "
                f"to {len(result.files)} shard(s) {result.files[0] if result.files else ''}")
        if result.skipped:
            line += f"; skipped {len(result.skipped)} unreadable, listed in {result.skipped_file}"
        click.echo(line, err=True)
