"""benchmarks/pool_memory.py runs end to end at a tiny size (--quick) and reports what it promises."""

import pytest
from conftest import load_benchmark


@pytest.mark.slow
def test_pool_memory_quick_run_reports_rss_per_size_and_pipeline_vs_step(tmp_path):
    pytest.importorskip("lenstronomy")
    bench = load_benchmark("pool_memory")
    results = bench.main(["--quick", "--out", str(tmp_path), "--workers", "1"])
    assert [row["n_images"] for row in results["rss"]] == [300, 1500]
    assert all(row["peak_rss_mib"] > 100 for row in results["rss"])  # a TF process, in MiB
    assert (tmp_path / "results-quick.json").exists()
    pipeline = results["pipeline"]
    assert pipeline["folder_pool_images_per_s"] > 0 and pipeline["train_step_images_per_s"] > 0
    assert pipeline["folder_ratio"] == pytest.approx(
        pipeline["folder_pool_images_per_s"] / pipeline["train_step_images_per_s"], rel=0.01)
