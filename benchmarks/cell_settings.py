"""Command-line flags of the quality benchmarks: the shared ones, and the cell settings (FULL / QUICK).

:func:`benchmark_parser` gives the flags every such benchmark has (``--out``,
``--quick``, ``--data``).

Every key of the FULL dict becomes a flag (``pretrain_steps`` -> ``--pretrain-steps``)
whose type comes from the FULL value (a list takes ``nargs="+"``). The flags
default to None, so :func:`fill_settings` can take what was not given from
FULL or, with ``--quick``, from QUICK.

Example:
    >>> add_setting_flags(parser, FULL, special={"arms": dict(nargs="+", choices=ARMS)})
    >>> args = fill_settings(parser.parse_args(argv), QUICK if quick else FULL)
"""

import argparse
from pathlib import Path


def benchmark_parser(doc, out, contents, quick_help="tiny end-to-end check (numbers meaningless)"):
    """An argparse parser described by ``doc``'s first paragraph, with ``--out``, ``--quick``, ``--data``.

    Args:
        doc: the benchmark's module docstring (shown whole by ``--help``).
        out: the default output folder.
        contents: what the output folder holds, for ``--out``'s help.
        quick_help: ``--quick``'s help.
    """
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(out), help=f"output folder ({contents})")
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--data", type=Path, default=None, help="use this three-band folder instead of simulating one")
    return p


def add_setting_flags(parser, settings, special=None):
    """Add one ``--flag`` per key of ``settings``; ``special[key]`` replaces its argparse options."""
    special = special or {}
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if key in special:
            parser.add_argument(flag, default=None, **special[key])
        elif isinstance(value, list):
            parser.add_argument(flag, type=type(value[0]), nargs="+", default=None)
        else:
            parser.add_argument(flag, type=type(value), default=None)


def fill_settings(args, base):
    """Set every setting the command line left at None from ``base``; return ``args``."""
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args
