"""The `kerasssl` command line: a click group, one module per sub-command.

Sub-commands stay thin: parse options -> config -> call the library API.
A :class:`kerasssl.errors.KerassslError` becomes one line and exit code 2.

Quiet by default: stderr carries kerasssl's own lines (errors, warnings,
progress) only. TensorFlow's native start-up lines (absl, oneDNN, CUDA probes)
are written to file descriptor 2 before ``TF_CPP_MIN_LOG_LEVEL`` applies, and
LiteRT's ignore it, so the CLI runs with fd 2 pointed at /dev/null and Python's
``sys.stderr`` on the original stderr (:class:`kerasssl.cli.quiet.NativeStderrHidden`),
and sets ``TF_CPP_MIN_LOG_LEVEL=3``. ``-v`` lets all of it through.
"""

import importlib
import logging
import os
import sys
import warnings

import click

from kerasssl import __version__
from kerasssl.cli.quiet import NativeStderrHidden, verbosity  # noqa: F401 - verbosity: part of the CLI API
from kerasssl.errors import KerassslError

# name -> module under kerasssl.cli holding a click command of that name.
# Imported lazily so `kerasssl --help` and `kerasssl inspect` do not load
# TensorFlow unless they need it.
COMMANDS = {
    "simulate": "simulate",
    "inspect": "inspect",
    "convert": "convert",
    "pretrain": "pretrain",
    "finetune": "finetune",
    "evaluate": "evaluate",
    "fit": "fit",
    "export": "export",
    "predict": "predict",
    "scan": "scan",
    "index": "index",
    "similar": "similar",
}

SHORT_HELP = {
    "simulate": "Simulate lens / non-lens images with lenstronomy.",
    "inspect": "Describe a data folder: format, classes, shapes, NaN counts.",
    "convert": "Convert a data folder to sharded TFRecord (tf.Example).",
    "pretrain": "Self-supervised pretraining of an encoder.",
    "finetune": "Fine-tune a pretrained encoder into a classifier.",
    "evaluate": "ROC-AUC (with CI), PR-AUC, TPR at low FPR, TPR0/TPR10, plots on a split.",
    "fit": "The whole job: split, pretrain, fine-tune, evaluate, export.",
    "export": "Export a classifier as a TF Serving SavedModel (+ TFLite).",
    "predict": "Lens probabilities for files with a .keras/SavedModel/.tflite.",
    "scan": "Rank a whole survey by lens probability (resumable, CSV/Parquet).",
    "index": "Embed a survey into a faiss index for similarity search.",
    "similar": "Nearest neighbours of known lenses in an index.",
}


class LazyGroup(click.Group):
    """A click group that imports a sub-command's module only when run."""

    def list_commands(self, ctx):
        return [n for n in COMMANDS if self._available(n)]

    def _available(self, name):
        spec = importlib.util.find_spec(f"kerasssl.cli.{COMMANDS[name]}")
        return spec is not None

    def get_command(self, ctx, name):
        if name not in COMMANDS or not self._available(name):
            return None
        module = importlib.import_module(f"kerasssl.cli.{COMMANDS[name]}")
        return getattr(module, name)

    def format_commands(self, ctx, formatter):
        rows = [(n, SHORT_HELP.get(n, "")) for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kerasssl")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose):
    """Self-supervised learning for strong-lensing images (Keras 3 / TensorFlow).

    Typical job: `kerasssl simulate` (or bring DeepLense data) -> `kerasssl fit`,
    or step by step: pretrain -> finetune -> evaluate -> export.
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s: %(message)s")


def main(argv=None):
    """Console entry point: user errors become one line and exit code 2.

    Without -v, native libraries' lines are kept off stderr (see the module docstring).
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if verbosity(args):
        _main(args)
    else:
        # TF C++ start-up chatter (CUDA probes, oneDNN notes) would bury our one-line errors.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with NativeStderrHidden():
            _main(args)


def _main(args):
    # A reloaded single-input functional model warns on every plain-tensor call
    # (Keras 3.15 records its inputs as a list): export, predict and fit's
    # export all make such calls; the call is right, the noise is not.
    warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")
    try:
        # obj: the command line as given (main(argv) need not be sys.argv), for the run's record.
        cli.main(args=args, prog_name="kerasssl", standalone_mode=False, obj={"argv": ["kerasssl", *args]})
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.UsageError as e:
        # One line, like every other user error; `--help` has the details.
        where = e.ctx.command_path if e.ctx is not None else "kerasssl"
        click.echo(f"{where}: error: {e.format_message()} (see --help)", err=True)
        sys.exit(2)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KerassslError as e:
        click.echo(f"kerasssl: error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    sys.exit(0)
