"""`kerasssl evaluate MODEL DATA --run-dir RUN`: ROC-AUC with CI, PR-AUC, lens-finder metrics, plots."""

from pathlib import Path

import click

from kerasssl.cli.options import command_line, data_options, prevalence_option
from kerasssl.config import EVALUATE_SPLITS


@click.command(name="evaluate")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))  # may be a TFRecord glob
@click.option("--run-dir", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory holding split.json (which files are in which split).")
@click.option("--split", type=click.Choice(EVALUATE_SPLITS), default=None,
              help="Split to evaluate on.  [default: config, test]")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Report JSON to write.  [default: RUN/report.json]")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ROC curve PNG to write.  [default: RUN/roc.png]")
@click.option("--baseline", "baseline_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="A second classifier (e.g. the supervised one) drawn as the baseline.")
@click.option("--allow-overlap", is_flag=True, default=False,
              help="Evaluate even on images that pretrained or fine-tuned the model, found by content "
                   "(fingerprints stored in the model) and by file name (the report says so).")
@click.option("--bootstrap", type=int, default=None, help="Bootstrap resamples for the CI.  [default: 1000]")
@prevalence_option
@data_options
def evaluate(model, data, run_dir, split, report_path, plot_path, baseline_path, allow_overlap, bootstrap,
             prevalence, allow_pickle, channel_axis):
    """Evaluate classifier MODEL on a split of DATA recorded in RUN/split.json.

    Refuses to evaluate on images that trained the model (pretraining or the
    labelled fine-tuning subset), whatever RUN or DATA: the model carries their
    content fingerprints, so copies under other names are caught too. Pass
    --allow-overlap to evaluate anyway.
    """
    from kerasssl.config import RunConfig
    from kerasssl.evaluate import evaluate_run
    from kerasssl.rundir import REPORT, ROC_PLOT, RunDir, recorder

    run = RunDir(run_dir)
    cfg = RunConfig.from_run(run) or RunConfig()
    # The evaluate section checks the flags too (e.g. --bootstrap: at least 10 resamples).
    cfg = cfg.with_overrides({"data.allow_pickle": allow_pickle, "data.channel_axis": channel_axis,
                              "evaluate.split": split, "evaluate.bootstrap": bootstrap,
                              "evaluate.allow_overlap": True if allow_overlap else None,
                              "evaluate.prevalence": prevalence})
    report_path = report_path or run.report
    plot_path = plot_path or run.roc_plot
    report = evaluate_run(model, data, run, report_path=report_path, plot_path=plot_path, cfg=cfg,
                          baseline_path=baseline_path)
    recorder("evaluate", config=cfg, reads={"model": model, "data": data, "baseline": baseline_path},
             moved={REPORT: report_path, ROC_PLOT: plot_path}, argv=command_line())(run_dir)
    low, high = report["roc_auc_ci"]
    click.echo(f"ROC-AUC {report['roc_auc']:.3f} (95% CI {low:.3f}-{high:.3f}), "
               f"PR-AUC {report['pr_auc']:.3f}, accuracy {report['accuracy']:.3f} "
               f"on {report['n_test']} {report['split']} images {report['class_counts']}")
    if "tpr_at_fpr" in report:
        from kerasssl.metrics import lens_finder_summary

        click.echo(lens_finder_summary(report))
    if report.get("overlap"):
        click.echo("WARNING: evaluated on files used in training (--allow-overlap); see report 'overlap'")
    click.echo(f"report: {report_path}")
    click.echo(f"ROC plot: {plot_path}")
    if (report.get("completeness") or {}).get("plot"):
        click.echo(f"completeness plot: {report['completeness']['plot']}")
