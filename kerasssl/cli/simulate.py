"""`kerasssl simulate`: write a simulated lens / non-lens data set (lenstronomy)."""

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--format", "fmt", default="hst", show_default=True, metavar="hst|three-band",
              help="hst: flat folder of 2-D arrays, lenses <n>_hst.npy, non-lenses "
                   "nl_<n>_hst.npy (HST-like single band). three-band: lenses/ and "
                   "nonlenses/ with (3, H, W) g, r, i arrays (ground-based seeing).")
@click.option("--n-lenses", type=int, default=100, show_default=True,
              help="Number of lens images.")
@click.option("--n-nonlenses", type=int, default=100, show_default=True,
              help="Number of non-lens images (same galaxy population, plus confusers).")
@click.option("--size", type=int, default=64, show_default=True,
              help="Image side in pixels (16-1024); the field of view is fixed per format.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed: the same seed gives byte-identical files.")
@click.option("--nan-fraction", type=float, default=0.0, show_default=True,
              help="Fraction of files that get a few NaN pixels (0.1-0.2 % of their "
                   "pixels: scattered, a cluster or a bad column), as in real sets.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Processes to use; does not change the output.")
def simulate(out, fmt, n_lenses, n_nonlenses, size, seed, nan_fraction, workers):
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
    """
    from kerasssl.simulate import simulate as run_simulation

    summary = run_simulation(out, fmt=fmt, n_lenses=n_lenses, n_nonlenses=n_nonlenses,
                             size=size, seed=seed, nan_fraction=nan_fraction,
                             workers=workers)
    click.echo(
        f"simulated {summary['n_images']} images ({summary['n_lenses']} lenses, "
        f"{summary['n_nonlenses']} non-lenses; {fmt}, {size}x{size}; "
        f"{summary['files_with_nan']} files with NaN) into {summary['out_dir']} in "
        f"{summary['seconds']:.1f} s ({summary['images_per_second']:.0f} images/s, "
        f"{workers} worker{'s' if workers > 1 else ''})"
    )
