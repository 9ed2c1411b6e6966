"""`kerasssl index MODEL SURVEY... --out IDX`: a faiss index of a survey's embeddings."""

from pathlib import Path

import click

from kerasssl.cli.options import data_options


@click.command(name="index")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("survey", nargs=-1, required=True)
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="The index folder.")
@click.option("--kind", type=click.Choice(["auto", "flat", "ivf", "hnsw"]), default="auto", show_default=True,
              help="faiss index: flat (exact) up to 10^6 images, ivf above (auto); or hnsw.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per model call.")
@click.option("--skip-bad", is_flag=True, default=False,
              help="Skip unreadable files/records (listed in IDX/skipped.txt) instead of stopping.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the IVF training sample.")
@click.option("--quiet", "-q", is_flag=True, default=False, help="No progress bar and no summary line.")
@data_options
def index(model, survey, out, kind, batch_size, skip_bad, seed, quiet, allow_pickle, channel_axis):
    """Embed every image of SURVEY with MODEL's encoder features into a faiss index at OUT.

    MODEL: a .keras classifier (its encoder's features, as the SavedModel's
    `embed`), a pretrained encoder.keras with the run's preprocess.json beside
    it, or a SavedModel. SURVEY as for `kerasssl scan`. Features are
    L2-normalised: similarities are cosines. OUT holds index.faiss, ids.txt and
    index.json (model path and fingerprint, n, dim, kind).
    """
    from kerasssl.similarity import build_index

    info = build_index(model, list(survey), out, kind=kind, batch_size=batch_size, skip_bad=skip_bad,
                       channel_axis=channel_axis or "auto", allow_pickle=bool(allow_pickle), seed=seed,
                       progress=False if quiet else None)
    if not quiet:
        record = info.record
        line = f"indexed {record['n']} image(s), {record['dim']} features, {record['kind']} index in {info.path}"
        if record["skipped"]:
            line += f"; skipped {record['skipped']} unreadable, listed in {info.path / 'skipped.txt'}"
        click.echo(line, err=True)
