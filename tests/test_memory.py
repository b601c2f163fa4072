"""Memory that does not grow with the data: a test-size version of the benchmark's 10k-200k runs.

Training reads a memory-mapped, uncompressed NPZ batch by batch; statistics are computed in
chunks and views keep mapped rows unread. A file ten times larger must not raise the job's
anonymous memory (page cache of the mapped file excluded) by anything like its size.
"""

from ptylab.stages.benchmark import memory_by_positions


def test_training_memory_does_not_grow_with_the_number_of_positions(tmp_path):
    # Both above the 4096-pattern chunk that statistics and validation read at a time.
    figures = memory_by_positions((5_000, 40_000), tmp_path, n=32)
    small, large = figures["5000"], figures["40000"]
    grown = large["peak_anon_mb"] - small["peak_anon_mb"]
    added_data = large["file_mb"] - small["file_mb"]  # about 140 MB of float32 patterns
    assert added_data > 120
    # A whole-array float64 temporary of the larger file alone would add twice its size.
    assert grown < 0.25 * added_data, figures
