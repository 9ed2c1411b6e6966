"""Run kerasssl's TFX pipeline (ImportExampleGen -> Trainer -> Pusher) with LocalDagRunner.

    kerasssl simulate /tmp/t/3b --format three-band --n-lenses 200 --n-nonlenses 200 --size 32 --seed 1
    kerasssl convert /tmp/t/3b /tmp/t/rec --to tfrecord --shards 4 --compression gzip
    python examples/tfx_pipeline.py /tmp/t/rec --root /tmp/t/tfx --serving-base /tmp/t/saved_models \
        --config examples/quick.yaml
    # -> /tmp/t/saved_models/lens_finder/<version>/  (serve it with TF Serving, see docs/tfx.md)

Needs tfx 1.21 (`pip install 'kerasssl[tfx]'`); see docs/tfx.md. Extra ``--beam-arg``s go to
ExampleGen's Beam jobs, e.g. ``--beam-arg=--direct_num_workers=4``.
"""

import argparse
import sys
import time


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", help="the folder `kerasssl convert` wrote")
    parser.add_argument("--root", required=True, help="pipeline root: TFX artifacts and ML Metadata")
    parser.add_argument("--serving-base", default="saved_models", help="model base path (TF Serving layout)")
    parser.add_argument("--name", default="lens_finder", help="model name: the folder under --serving-base")
    parser.add_argument("--config", default=None, help="kerasssl run config (YAML) for the Trainer")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set pretrain.epochs=1 (value parsed as YAML)")
    parser.add_argument("--beam-arg", dest="beam_args", action="append", default=[],
                        help="a flag for ExampleGen's Beam jobs, e.g. --beam-arg=--direct_num_workers=2")
    args = parser.parse_args(argv)

    import yaml

    from kerasssl.errors import KerassslError
    from kerasssl.pipelines.tfx_pipeline import run_local_pipeline

    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    started = time.perf_counter()
    try:
        pushed = run_local_pipeline(args.shards, args.root, args.serving_base, name=args.name, config=args.config,
                                    overrides=overrides, beam_pipeline_args=args.beam_args)
    except KerassslError as e:
        print(f"tfx_pipeline: error: {e}", file=sys.stderr)
        return 2
    print(f"pushed {pushed} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
