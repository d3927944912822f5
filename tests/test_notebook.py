"""notebooks/quickstart.ipynb on a simulated Colab runtime: its install cell, then every cell.

``.venv-colab`` (``make venv-colab``) is what a Colab runtime has before the notebook runs:
Python 3.12 with TensorFlow, tensorflow-datasets and jax preinstalled (``requirements-colab.txt``),
not this project. The test removes the project from it if a previous run installed it, executes
the notebook with nbclient in that venv's kernel (QUICK mode, offline) with the install cell
pointed at a copy of this checkout (``ROBUST_LOSSES_JAX_SOURCE``), and checks that the install
left Colab's TensorFlow as it was and ``pip check`` passes. The executed copy goes to a temporary
directory, never into the repository.

Without ``.venv-colab`` the test fails and says to run ``make venv-colab``; set
``SKIP_NOTEBOOK_TEST=1`` to skip it deliberately (a machine without Python 3.12).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
COLAB_PYTHON = ROOT / ".venv-colab" / "bin" / "python"
KERNEL = "robust_losses_jax_colab"  # Installed into .venv-colab by `make venv-colab`.

# Run with .venv-colab's Python: execute the notebook and write the executed copy. Cell errors are
# raised (CellExecutionError names the cell); the kernel is the venv's own, found by name in
# .venv-colab/share/jupyter/kernels.
RUNNER = """
import sys, time
import nbformat
from nbclient import NotebookClient

source, executed, cwd = sys.argv[1:4]
notebook = nbformat.read(source, as_version=4)
start = time.perf_counter()
NotebookClient(notebook, kernel_name=sys.argv[4], timeout=900,
               resources={"metadata": {"path": cwd}}).execute()
nbformat.write(notebook, executed)
print(f"notebook executed in {time.perf_counter() - start:.1f} s")
"""


def kernel_environment(tmp_path: Path, source: Path) -> dict[str, str]:
    """The test process's environment as a user's would be: QUICK on, no test-only XLA flags
    (conftest's 8 simulated devices), nothing of the checkout on the path, the install cell's
    source ``source``, scratch files (the notebook's workdir) under ``tmp_path``."""
    drop = ("XLA_FLAGS", "MPLBACKEND", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(QUICK="1", TMPDIR=str(tmp_path), ROBUST_LOSSES_JAX_SOURCE=str(source))
    return env


def colab_python(code: str) -> str:
    """What ``code`` prints, run by the Colab venv's Python outside the checkout."""
    return subprocess.run(
        [str(COLAB_PYTHON), "-c", code], capture_output=True, text=True, check=True, cwd="/"
    ).stdout.strip()


def distributions() -> dict[str, str]:
    """The Colab venv's installed distributions: name -> version."""
    listed = subprocess.run(
        [str(COLAB_PYTHON), "-m", "pip", "list", "--format=json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    # Names as PEP 503 normalises them: robust_losses_jax and robust-losses-jax are one.
    return {re.sub(r"[-_.]+", "-", p["name"]).lower(): p["version"] for p in json.loads(listed)}


def outputs(notebook: dict) -> list[dict]:
    return [
        out for cell in notebook["cells"] if cell["cell_type"] == "code" for out in cell["outputs"]
    ]


def text_of(output: dict) -> str:
    if output["output_type"] == "stream":
        return "".join(output["text"])
    return "".join(output.get("data", {}).get("text/plain", ""))


@pytest.mark.slow
def test_quickstart_notebook_installs_and_runs_on_colab(tmp_path, checkout_copy):
    if os.environ.get("SKIP_NOTEBOOK_TEST") == "1":
        pytest.skip("SKIP_NOTEBOOK_TEST=1")
    assert COLAB_PYTHON.exists(), (
        f"{COLAB_PYTHON} is missing: run `make venv-colab` (Colab's runtime: Python 3.12 with "
        "TensorFlow and jax), or set SKIP_NOTEBOOK_TEST=1 to skip this test"
    )
    subprocess.run(
        [str(COLAB_PYTHON), "-m", "pip", "uninstall", "--quiet", "--yes", "robust_losses_jax"],
        capture_output=True, check=True,
    )  # fmt: skip
    before = distributions()
    assert "robust-losses-jax" not in before and "tensorflow" in before
    committed = NOTEBOOK.read_bytes()
    notebook = json.loads(committed)
    assert all(
        not cell.get("outputs") and cell.get("execution_count") is None
        for cell in notebook["cells"]
        if cell["cell_type"] == "code"
    ), "notebooks/quickstart.ipynb is committed with outputs: clear them"

    executed = tmp_path / "quickstart.executed.ipynb"
    work = tmp_path / "cwd"
    work.mkdir()
    done = subprocess.run(
        [str(COLAB_PYTHON), "-c", RUNNER, str(NOTEBOOK), str(executed), str(work), KERNEL],
        env=kernel_environment(tmp_path, checkout_copy),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, (
        f"the notebook failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    )
    print(done.stdout.strip(), file=sys.stderr)

    result = json.loads(executed.read_text())
    everything = outputs(result)
    assert not [out for out in everything if out["output_type"] == "error"]
    text = "\n".join(text_of(out) for out in everything)
    assert "Python 3.12." in text, "the notebook did not run on the Python 3.12 kernel"
    assert "jax 0.12" in text
    assert "accelerator: cpu" in text
    assert "fashion_mnist + small_cnn" in text  # QUICK mode.
    for name in ("cross-entropy", "power γ=0.5"):
        line = next((x for x in text.splitlines() if x.startswith(f"{name}: test accuracy ")), None)
        assert line is not None, f"no one-line result for {name}:\n{text}"
        assert "detection F1 " in line and "AUROC " in line
    assert "examples: " in text and "flagged, estimated noise rate" in text  # The audit.
    assert re.search(r"\S -> \S[^\n]*: \d+ flagged", text)  # The confused pairs.
    assert re.search(r"test accuracy: 0\.\d+ on all the given labels, 0\.\d+ without", text)
    images = [out for out in everything if "image/png" in out.get("data", {})]
    assert len(images) >= 3, f"{len(images)} figures (histograms, F1 per epoch, suspects grid)"
    tables = [out for out in everything if "text/html" in out.get("data", {})]
    assert any("<table>" in "".join(out["data"]["text/html"]) for out in tables)
    assert NOTEBOOK.read_bytes() == committed  # Executed elsewhere, the notebook left as it was.

    # The install cell installed the project, and left Colab's TensorFlow as it was.
    after = distributions()
    assert "robust-losses-jax" in after
    assert after["tensorflow"] == before["tensorflow"]
    assert "tensorflow-cpu" not in after
    assert {k: v for k, v in before.items() if k in after and after[k] != v} == {}
    assert colab_python("import tensorflow; print(tensorflow.__version__)") == before["tensorflow"]
    check = subprocess.run(
        [str(COLAB_PYTHON), "-m", "pip", "check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
