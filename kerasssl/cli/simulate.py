"""`kerasssl simulate`: write a simulated lens / non-lens data set or an unlabeled pool."""

import click

from kerasssl.errors import KerassslError

DEFAULT_PER_CLASS = 100


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--format", "fmt", default="hst", show_default=True,
              metavar="hst|three-band|pool",
              help="hst: flat folder of 2-D arrays, lenses <n>_hst.npy, non-lenses "
                   "nl_<n>_hst.npy (HST-like single band). three-band: lenses/ and "
                   "nonlenses/ with (3, H, W) g, r, i arrays (ground-based seeing). "
                   "pool: an unlabeled pool, a flat folder pool_<n>.npy in a seeded "
                   "random order (names do not reveal the class; the truth is in "
                   "metadata.csv); read it with --unlabeled.")
@click.option("--n-lenses", type=int, default=None,
              help=f"Number of lens images (hst, three-band) [default: {DEFAULT_PER_CLASS}].")
@click.option("--n-nonlenses", type=int, default=None,
              help="Number of non-lens images (same galaxy population, plus confusers) "
                   f"[default: {DEFAULT_PER_CLASS}].")
@click.option("--n", "n_images", type=int, default=None,
              help="pool: number of images (required).")
@click.option("--lens-fraction", type=float, default=None,
              help="pool: fraction of lenses (required); exactly round(N x F) are lenses.")
@click.option("--bands", type=int, default=None,
              help="pool: 3 for (3, H, W) g, r, i arrays as three-band, 1 for 2-D arrays "
                   "as hst [default: 3].")
@click.option("--size", type=int, default=64, show_default=True,
              help="Image side in pixels (16-1024); the field of view is fixed per format.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed: the same seed gives byte-identical files.")
@click.option("--nan-fraction", type=float, default=0.0, show_default=True,
              help="Fraction of files that get a few NaN pixels (0.1-0.2 % of their "
                   "pixels: scattered, a cluster or a bad column), as in real sets.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Processes to use; does not change the output.")
def simulate(out, fmt, n_lenses, n_nonlenses, n_images, lens_fraction, bands, size, seed,
             nan_fraction, workers):
    """Simulate strong-lens and non-lens images into the new folder OUT.

    Lenses: SIE + external shear deflector with its own Sersic light, a lensed
    clumpy Sersic source (random Einstein radius, position and brightness: some
    faint, some barely resolved), Gaussian PSF, sky + Poisson noise. Non-lenses:
    the same deflector population without a source, some with a confuser (a
    ring, spiral arms or a blended blue galaxy); companions in both classes.

    OUT must not exist or be empty; it is written completely or not at all,
    with a metadata.csv of every image's parameters. Needs lenstronomy
    (pip install 'kerasssl[sim]').

    Example: kerasssl simulate data/sim --format three-band --n-lenses 500
    --n-nonlenses 500 --size 64 --seed 1 --nan-fraction 0.1 --workers 2

    Example: kerasssl simulate data/pool --format pool --n 3000 --lens-fraction 0.05
    --size 32 --seed 2
    """
    from kerasssl.simulate import simulate as simulate_labelled
    from kerasssl.simulate import simulate_pool

    common = {"size": size, "seed": seed, "nan_fraction": nan_fraction, "workers": workers}
    if fmt == "pool":
        if n_lenses is not None or n_nonlenses is not None:
            raise KerassslError("--n-lenses / --n-nonlenses: not used with --format pool "
                                "(give --n and --lens-fraction)")
        for name, value in (("--n", n_images), ("--lens-fraction", lens_fraction)):
            if value is None:
                raise KerassslError(f"{name}: required with --format pool")
        summary = simulate_pool(out, n=n_images, lens_fraction=lens_fraction,
                                bands=3 if bands is None else bands, **common)
        what = (f"an unlabeled pool of {summary['n_images']} images "
                f"({summary['n_lenses']} lenses, {summary['n_nonlenses']} non-lenses, "
                f"truth in metadata.csv; {size}x{size}, {summary['bands']} "
                f"band{'s' if summary['bands'] > 1 else ''}")
    else:
        given = [name for name, value in (("--n", n_images), ("--lens-fraction", lens_fraction),
                                          ("--bands", bands)) if value is not None]
        if given:
            raise KerassslError(f"{' / '.join(given)}: only with --format pool "
                                "(use --n-lenses / --n-nonlenses)")
        summary = simulate_labelled(
            out, fmt=fmt, n_lenses=DEFAULT_PER_CLASS if n_lenses is None else n_lenses,
            n_nonlenses=DEFAULT_PER_CLASS if n_nonlenses is None else n_nonlenses, **common)
        what = (f"{summary['n_images']} images ({summary['n_lenses']} lenses, "
                f"{summary['n_nonlenses']} non-lenses; {fmt}, {size}x{size}")
    click.echo(
        f"simulated {what}; {summary['files_with_nan']} files with NaN) into "
        f"{summary['out_dir']} in {summary['seconds']:.1f} s "
        f"({summary['images_per_second']:.0f} images/s, "
        f"{workers} worker{'s' if workers > 1 else ''})"
    )
