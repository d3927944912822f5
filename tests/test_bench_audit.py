"""benchmarks/bench_audit.py: the JAX audit row on a small planted set, its table and memory."""

import re

import pytest

from benchmarks import bench_audit


@pytest.mark.slow
def test_main_prints_the_row_f1_and_peak_memory(capsys):
    bench_audit.main(["--quick", "--train-size=600", "--no-torch"])
    out = capsys.readouterr().out
    assert "audit of 600 Fashion-MNIST examples (" in out and "asymmetric errors" in out
    for name in ("jax audit", "jax 5-fold cl"):
        row = re.search(rf"^{name}\s+(\d+\.\d)\s+(\d+)\s+(\d\.\d{{3}})$", out, re.MULTILINE)
        assert row and 0.0 <= float(row.group(3)) <= 1.0, out
    assert re.search(r"^ratio jax 5-fold cl vs jax audit: \d+\.\d\d$", out, re.MULTILINE), out
    peak = re.search(r"peak host memory after the jax audit: (\d+\.\d\d) GB", out)
    assert peak and 0.1 < float(peak.group(1)) < 24, out
