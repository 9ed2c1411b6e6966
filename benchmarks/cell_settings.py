"""Command-line flags for a benchmark's cell settings (the FULL / QUICK dicts).

Every key of the FULL dict becomes a flag (``pretrain_steps`` -> ``--pretrain-steps``)
whose type comes from the FULL value (a list takes ``nargs="+"``). The flags
default to None, so :func:`fill_settings` can take what was not given from
FULL or, with ``--quick``, from QUICK.

Example:
    >>> add_setting_flags(parser, FULL, special={"arms": dict(nargs="+", choices=ARMS)})
    >>> args = fill_settings(parser.parse_args(argv), QUICK if quick else FULL)
"""


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
