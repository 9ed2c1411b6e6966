"""`kerasssl similar IDX --query lens1.npy ... --k 100 --out neighbours.csv`: look-alikes of known lenses."""

from pathlib import Path

import click


@click.command(name="similar")
@click.argument("index_dir", metavar="IDX", type=click.Path(path_type=Path))
@click.option("--query", "queries", multiple=True, required=True,
              help="Query images (.npy/FITS files, folders, file lists or TFRecords); "
                   "repeat the option or list several after it.")
@click.option("--k", "k", type=click.IntRange(min=1), default=100, show_default=True,
              help="Neighbours per query.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="CSV with columns query, rank, id, similarity.")
@click.option("--mean", is_flag=True, default=False, help="Also the neighbours of the queries' mean (query 'mean').")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="Embed the queries with this model (it must be the one that built IDX; default: the recorded one).")
@click.option("--nprobe", type=click.IntRange(min=1), default=None, help="IVF lists to search (default: recorded).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Images per model call.")
@click.argument("more_queries", nargs=-1, metavar="")
def similar(index_dir, queries, k, out, mean, model, nprobe, batch_size, more_queries):
    """Nearest neighbours in IDX of each query image, by cosine similarity of the model's features.

    Queries are read and preprocessed like any image, through the model that
    built the index. A query that is itself in the index finds itself first.
    """
    from kerasssl.similarity import similar as find_similar
    from kerasssl.similarity import write_neighbours

    rows = find_similar(index_dir, list(queries) + list(more_queries), k=k, mean=mean, model=model,
                        batch_size=batch_size, nprobe=nprobe)
    write_neighbours(rows, out)
    n_queries = len({row[0] for row in rows})
    click.echo(f"wrote {len(rows)} neighbour(s) of {n_queries} quer{'y' if n_queries == 1 else 'ies'} to {out}",
               err=True)
