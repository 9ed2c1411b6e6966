"""kerasssl on distributed engines: the survey scan as an Apache Beam pipeline.

:mod:`kerasssl.pipelines.beam_scan` imports ``apache_beam`` at its top, so it
is imported only when a Beam run is asked for; the rest of kerasssl works
without Beam. Beam lives in its own environment (``make test-beam``,
``pip install 'kerasssl[beam]' -c constraints-beam.txt``) because it pins
protobuf < 7, which the main constraints do not meet.
"""

from pathlib import Path

from kerasssl.errors import DataError, KerassslError
from kerasssl.models import model_kind

INSTALL_HINT = ("--runner beam needs Apache Beam, which lives in its own environment: "
                "make test-beam (creates .venv-beam), or pip install 'kerasssl[beam]' -c constraints-beam.txt")


def require_beam() -> None:
    """Refuse, in one line, when ``apache_beam`` cannot be imported here."""
    try:
        import apache_beam  # noqa: F401
    except ImportError:
        raise KerassslError(INSTALL_HINT) from None


def check_saved_model(model) -> Path:
    """The SavedModel to run, or a one-line refusal of any other kind of model."""
    path = Path(model)
    kind = model_kind(path)  # DataError when missing
    if kind != "saved_model":
        raise DataError(path, f"--runner beam runs RunInference with an exported SavedModel (a version folder "
                              f"or BASE/NAME), not a .{kind} file: export it with `kerasssl export {path} "
                              f"--name lens_finder` and scan saved_models/lens_finder")
    return path
