"""The host input-pipeline benchmark runs and reports pairs per second."""

from test_config import load

from matchme_jax.data import throughput


def test_throughput_reports_pairs_per_second(tfds_dir):
    config = load("synthetic.py:tiny")
    config.dataset.data_dir = tfds_dir
    result = throughput.measure(config, batches=3, warmup=1)
    assert result["batch_size"] == config.train.batch_size
    assert result["pairs_per_s"] > 0
    assert result["pairs_per_s_per_worker"] == result["pairs_per_s"]  # 0 workers: the main process
