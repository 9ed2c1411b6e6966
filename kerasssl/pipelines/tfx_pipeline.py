"""A TFX pipeline: ImportExampleGen over kerasssl's shards -> Trainer (kerasssl) -> Pusher.

- **ImportExampleGen** reads the shards ``kerasssl convert`` wrote (GZIP or not:
  Beam reads ``.gz`` as GZIP) and splits them by a hash of the ``filename``
  feature (8:2 train:eval by default), so an image file stays in one split on
  every run; its output is GZIP ``Split-*/data_tfrecord-*.gz`` of the records as
  they were.
- **Trainer** runs ``kerasssl.pipelines.tfx_trainer.run_fn``: ``kerasssl fit``
  (split, SSL pretraining, fine-tuning, evaluation, export) on the train split,
  a report on the eval split, kerasssl's SavedModel (``serving_default``,
  ``predict_examples``, ``embed``) as the Trainer's serving model.
- **Pusher** copies it to ``SERVING_BASE/NAME/<version>/``, the layout TF Serving
  watches (the version is the push time in seconds).

TFX is imported inside the functions: this module is importable without it.
Other orchestrators take the same :func:`build_pipeline` (Kubeflow:
``tfx.orchestration.experimental.KubeflowV2DagRunner``; Vertex AI Pipelines),
and ``beam_pipeline_args`` choose the runner of ExampleGen's Beam jobs
(``--runner=DataflowRunner``, ``--runner=FlinkRunner``, ...).

Example:
    >>> pushed = run_local_pipeline("data/rec", "tfx_root", "saved_models", config="examples/quick.yaml")
    >>> pushed
    PosixPath('saved_models/lens_finder/1796170000')
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from kerasssl.errors import DataError, KerassslError

RUN_FN = "kerasssl.pipelines.tfx_trainer.run_fn"
INSTALL_HINT = "the TFX pipeline needs tfx 1.21 (pip install 'kerasssl[tfx]'; see docs/tfx.md)"


def _tfx():
    try:
        from tfx import v1 as tfx
    except ImportError:
        raise KerassslError(INSTALL_HINT) from None
    return tfx


def build_pipeline(shards, pipeline_root, serving_base, *, name: str = "lens_finder", config=None,
                   overrides: Optional[dict] = None, pattern: str = "*.tfrecord*", eval_buckets: int = 2,
                   train_buckets: int = 8, metadata_path=None, beam_pipeline_args: Sequence[str] = (),
                   pipeline_name: str = "kerasssl"):
    """The ``tfx.dsl.Pipeline`` (ExampleGen -> Trainer -> Pusher) over the shards in folder ``shards``.

    Args:
        shards: the folder ``kerasssl convert`` wrote (its shards match ``pattern``).
        pipeline_root: where TFX keeps the artifacts of every run.
        serving_base: the model base path; the Pusher writes ``serving_base/name/<version>/``.
        config / overrides: the Trainer's kerasssl config (a YAML path or a dict) and
            dotted-key overrides (see :mod:`kerasssl.pipelines.tfx_trainer`).
        eval_buckets / train_buckets: ExampleGen's hash buckets per split.
        metadata_path: the ML Metadata SQLite file (default: ``pipeline_root/metadata.sqlite``).
        beam_pipeline_args: flags of ExampleGen's Beam jobs.
    """
    from kerasssl.config import check_model_name

    tfx = _tfx()
    shards = Path(shards)
    if not shards.is_dir() or not any(shards.glob(pattern)):
        raise DataError(shards, f"no shards matching {pattern!r} in this folder (ImportExampleGen's input_base)")
    check_model_name(name, "name")
    if isinstance(config, Path):
        config = str(config)
    example_gen = tfx.components.ImportExampleGen(
        input_base=str(shards),
        input_config=tfx.proto.Input(splits=[tfx.proto.Input.Split(name="all", pattern=pattern)]),
        output_config=tfx.proto.Output(split_config=tfx.proto.SplitConfig(
            splits=[tfx.proto.SplitConfig.Split(name="train", hash_buckets=train_buckets),
                    tfx.proto.SplitConfig.Split(name="eval", hash_buckets=eval_buckets)],
            partition_feature_name="filename")))
    trainer = tfx.components.Trainer(
        run_fn=RUN_FN,
        examples=example_gen.outputs["examples"],
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config={"config": config, "overrides": dict(overrides or {})})
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        push_destination=tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
            base_directory=str(Path(serving_base) / name))))
    root = Path(pipeline_root)
    metadata = Path(metadata_path) if metadata_path else root / "metadata.sqlite"
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name, pipeline_root=str(root), components=[example_gen, trainer, pusher],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(str(metadata)),
        beam_pipeline_args=list(beam_pipeline_args), enable_cache=False)


def run_local_pipeline(shards, pipeline_root, serving_base, *, name: str = "lens_finder", **kwargs) -> Path:
    """Run :func:`build_pipeline` with TFX's ``LocalDagRunner``; the pushed version folder.

    Raises:
        KerassslError: the pipeline ran but pushed no new version.
    """
    from kerasssl.models import existing_versions

    tfx = _tfx()
    model_dir = Path(serving_base) / name
    before = set(existing_versions(model_dir)) if model_dir.is_dir() else set()
    tfx.orchestration.LocalDagRunner().run(build_pipeline(shards, pipeline_root, serving_base, name=name, **kwargs))
    new = sorted(set(existing_versions(model_dir)) - before) if model_dir.is_dir() else []
    if not new:
        raise KerassslError(f"{model_dir}: the pipeline finished but the Pusher wrote no new version")
    return model_dir / str(new[-1])
