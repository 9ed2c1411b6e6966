"""`kerasssl inspect DATA`: what a data folder holds, before training on it."""

import json

import click

from kerasssl.cli.options import data_options, group_options


@click.command(name="inspect")
@click.argument("data", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (keys: format, n_images, classes, shape, dtype, "
                   "channel_layout, min, max, nan_pixels, inf_pixels, files_with_nan, per_class, ...).")
@click.option("--image-size", type=click.IntRange(min=1), default=None, metavar="S",
              help="Centre-crop every image to S x S (needed when files differ in size; "
                   "smaller images are refused, never padded).")
@click.option("--unlabeled", is_flag=True, default=False,
              help="DATA is an unlabeled pool (a folder of .npy/FITS files at any depth, or "
                   "TFRecord shards with or without labels): read it as pretraining would, "
                   "streaming, and report one 'unlabeled' row.")
@click.option("--skip-bad", "skip_bad", is_flag=True, default=False,
              help="With --unlabeled: count and list bad files instead of stopping at the first.")
@group_options
@data_options
def inspect(data, as_json, image_size, unlabeled, skip_bad, allow_pickle, channel_axis, group_by, groups):
    """Describe DATA: detected format, class counts, image shape, value range, NaN/Inf.

    DATA is a flat folder of .npy/.fits images (files named nl_* are
    non-lenses, the rest lenses: the DeepLense HST layout), a folder with one
    sub-folder per class (lenses/ nonlenses/, or no_sub/ cdm/ axion/), or
    TFRecord shards (a glob, a shard, or a folder of shards).

    Shapes are given as [H, W, C] after channels-first arrays are transposed;
    the "layout" line says which axis held the bands and why (decided from
    all files, or --channels-first/--channels-last); the value range is over finite pixels; NaN/Inf pixels and the files holding
    them are counted per class. With --group-by / --groups, the "groups" line
    counts the objects a split would keep whole (and those holding several
    classes). Files are only read, never modified.

    \b
    Examples:
      kerasssl inspect data/hst
      kerasssl inspect data/three_band --json
      kerasssl inspect data/sim --allow-pickle --image-size 64
      kerasssl inspect data/cubes --channels-first
      kerasssl inspect data/hst --group-by '^(?:nl_)?(\d+)_'
    """
    grouping = None
    if group_by is not None or groups is not None:
        if unlabeled:
            raise click.UsageError("--group-by / --groups group a labelled DATA's split; not with --unlabeled")
        from kerasssl.config import DataConfig
        from kerasssl.data.groups import Grouping

        grouping = Grouping.from_config(DataConfig(group_by=group_by, groups=groups))  # the config's checks
    if unlabeled:
        summary = _describe_pool(data, image_size, bool(allow_pickle), channel_axis or "auto", skip_bad)
    else:
        from kerasssl.data.clean import describe
        from kerasssl.data.load import load_images

        image_set = load_images(data, image_size=image_size, allow_pickle=bool(allow_pickle),
                                channel_axis=channel_axis or "auto")
        summary = describe(image_set)
        if grouping is not None:
            from kerasssl.data.groups import describe_groups

            summary["groups"] = describe_groups(image_set, grouping)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(format_summary(summary))


def _describe_pool(data, image_size, allow_pickle, channel_axis, skip_bad) -> dict:
    """The pool's listing, header checks and content pass (what pretraining does first), summarised."""
    from kerasssl.data.pool import check_headers, list_pool
    from kerasssl.data.poolscan import describe_pool, scan_pool

    files, skipped = list_pool(data, skip_bad=skip_bad)
    layout = check_headers(files, image_size=image_size, channel_axis=channel_axis,
                           allow_pickle=allow_pickle, skip_bad=skip_bad, skipped=skipped)
    return describe_pool([scan_pool(layout, image_size=image_size, allow_pickle=allow_pickle,
                                    skip_bad=skip_bad)])


_LAYOUTS = {
    "pool": "unlabeled pool",
    "hst": "flat folder, nl_* = non-lens",
    "folders": "one sub-folder per class",
    "fits": "FITS files",
    "tfrecord": "TFRecord shards",
}


_AXIS_NAMES = {"first": "channels-first (C, H, W)", "last": "channels-last (H, W, C)",
               None: "2-D (H, W), one band"}


def _num(value):
    return "-" if value is None else f"{value:.4g}"


def format_summary(s: dict) -> str:
    """The readable table ``kerasssl inspect`` prints without ``--json``."""
    h, w, c = s["shape"]
    stored = ", ".join("x".join(map(str, shape)) for shape in s.get("stored_shapes", [])[:3])
    lines = [
        f"data     {s['path']}",
        f"format   {s['format']} ({_LAYOUTS.get(s['format'], s['format'])})",
        f"images   {s['n_images']} of [H, W, C] = [{h}, {w}, {c}]"
        + (f"; stored as {stored} {s['dtype']}" if stored else f"; stored as {s['dtype']}"),
        *([f"layout   {_AXIS_NAMES.get(layout['axis'], layout['axis'])}: {layout['reason']}"]
          if (layout := s.get("channel_layout")) else []),
        f"values   min {_num(s['min'])}, max {_num(s['max'])} (finite pixels)",
        "bands    " + ", ".join(f"mean {_num(m)} std {_num(d)}"
                                for m, d in zip(s["band_mean"], s["band_std"])),
        "",
    ]
    header = ("class", "images", "NaN px", "Inf px", "files w/ NaN", "files w/ Inf", "min", "max")
    rows = [header]
    for name, cls in s["per_class"].items():
        rows.append((name, cls["n_images"], cls["nan_pixels"], cls["inf_pixels"],
                     cls["files_with_nan"], cls["files_with_inf"], _num(cls["min"]),
                     _num(cls["max"])))
    rows.append(("total", s["n_images"], s["nan_pixels"], s["inf_pixels"], s["files_with_nan"],
                 s["files_with_inf"], _num(s["min"]), _num(s["max"])))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    for row in rows:
        cells = [str(row[0]).ljust(widths[0])] + [str(v).rjust(widths[i])
                                                  for i, v in enumerate(row) if i]
        lines.append("  ".join(cells))
    if s.get("format") == "pool":
        lines.insert(2, f"pool     {', '.join(s.get('pool_kinds', []))}, {s.get('bytes', 0) / 2 ** 20:.1f} MiB"
                        + (f", listing fingerprint {s['pools'][0]['listing_fingerprint']}"
                           if len(s.get("pools", [])) == 1 else ""))
        skipped = s.get("skipped", [])
        if skipped:
            lines.append("")
            lines.append(f"skipped {len(skipped)} bad file(s): " + "; ".join(
                f"{k['file']}: {k['problem']}" for k in skipped[:3]) + (" ..." if len(skipped) > 3 else ""))
    if "groups" in s:
        g = s["groups"]
        per_class = ", ".join(f"{name} {n}" for name, n in g["groups_per_class"].items())
        lines.append("")
        lines.append(f"groups   {g['n_groups']} (per class: {per_class}); {g['mixed_groups']} hold several "
                     f"classes; the largest has {g['largest_group']} image(s)")
    bad = s.get("nonfinite_files", [])
    if bad:
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        lines.append("")
        lines.append(f"NaN/Inf pixels in {len(bad)} file(s): {', '.join(bad[:5])}{more}; "
                     "they are repaired in memory by the model's Preprocess layer")
    return "\n".join(lines)
