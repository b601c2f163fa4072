"""The benchmark harness runs (its --quick mode); numbers are reported, never asserted as times."""

import json

from .conftest import ROOT, run_script

KEYS = ["physics_bound_patterns_per_s_gs2", "train_patterns_per_s_bare_gs2", "train_patterns_per_s_lightning_gs2",
        "lightning_over_bare_gs2", "train_model_flop_utilization_gs2", "inference_patterns_per_s", "reconstruct_s",
        "simulate_patterns_per_s", "peak_rss_mb", "default_job_s", "peak_matmul_gflops",
        "train_patterns_per_s_bare_decoders_only_gs2", "decoders_only_over_whole_gs2"]


def test_quick_benchmark_writes_every_figure_and_leaves_no_scratch_files(tmp_path):
    out = tmp_path / "benchmark.json"
    temp = tmp_path / "temp"  # the system's temp directory, as the benchmark sees it
    temp.mkdir()
    res = run_script(["scripts/benchmark.py", "quick=true", f"output={out}"], cwd=ROOT, env={"TMPDIR": str(temp)})
    assert res.returncode == 0, res.stderr[-3000:]
    figures = json.loads(out.read_text())
    for key in KEYS:
        assert figures[key] > 0, key
    # a training step counts the network's FLOPs: far more than the physics layer alone
    assert figures["train_flops_per_step_gs2"] > 1e8
    assert "lightning_over_bare_gs2" in res.stdout
    # its child jobs, data and bundle (about 130 MB) are removed, not left behind on every run
    assert not any(temp.glob("ptylab-bench-*")), sorted(temp.iterdir())
