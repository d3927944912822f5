"""Installing the package as a user does: outside the checkout, without TensorFlow, one command.

``test_installed_command_outside_the_checkout`` installs a copy of the checkout (its files as git
sees them, uncommitted changes included) into a fresh venv of ``$PYTHON313`` (``make test`` sets
it; else this Python) with ``requirements.txt`` as constraints, and runs ``robust-losses`` from a
directory outside the checkout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SUBCOMMANDS = ("run", "find-errors", "sweep", "report", "evidence")


def tiny_npz(path: Path, num_examples: int = 240, num_classes: int = 3) -> Path:
    """Random 8x8 images whose class is their mean brightness band: a model learns it at once."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, num_classes, num_examples)
    images = (labels[:, None, None] * 80 + rng.integers(0, 60, (num_examples, 8, 8))).astype(
        np.uint8
    )
    np.savez(path, train_images=images, train_labels=labels, class_names=np.array(["a", "b", "c"]))
    return path


def run_in(venv_dir: Path, cwd: Path, *args: str, timeout: int = 300):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    env["PATH"] = f"{venv_dir / 'bin'}{os.pathsep}{env['PATH']}"
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_installed_command_outside_the_checkout(tmp_path, checkout_copy):
    python = os.environ.get("PYTHON313") or sys.executable
    version = subprocess.run(
        [python, "-c", "import sys; print(*sys.version_info[:2], sep='.')"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    source = checkout_copy
    venv_dir = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv_dir)], check=True)
    pip = [str(venv_dir / "bin" / "python"), "-m", "pip"]
    installed = subprocess.run(
        [*pip, "install", "--quiet", str(source), "-c", str(ROOT / "requirements.txt")],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-4000:]
    away = tmp_path / "elsewhere"
    away.mkdir()

    for sub in SUBCOMMANDS:
        done = run_in(venv_dir, away, "robust-losses", sub, "--help")
        assert done.returncode == 0 and done.stdout.startswith("usage: robust-losses"), (
            sub, done.stderr,
        )  # fmt: skip
    done = run_in(venv_dir, away, "robust-losses", "--version")
    assert done.stdout.strip() == "robust_losses_jax 0.1.0"

    # A user's npz, audited with one command.
    data = tiny_npz(away / "mine.npz")
    done = run_in(
        venv_dir, away, "robust-losses", "find-errors", f"--dataset=npz:{data}",
        "--model=mlp", "--epochs=2", "--folds=2", "--batch-size=64", "--no-progress",
        "--workdir=audit",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "labels flagged" in done.stdout
    summary = json.loads((away / "audit" / "summary.json").read_text())
    assert summary["examples"] == 240
    assert (away / "audit" / "label_issues.csv").read_text().count("\n") == 241

    # No TensorFlow came with the package; a tfds dataset says what to install, exit 2.
    listed = subprocess.run([*pip, "list", "--format=json"], capture_output=True, text=True)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert not {"tensorflow", "tensorflow-cpu"} & names, f"Python {version}: {sorted(names)}"
    assert subprocess.run([*pip, "check"], capture_output=True).returncode == 0
    done = run_in(venv_dir, away, "robust-losses", "run", "--dataset=sklearn_digits")
    assert done.returncode == 2
    assert "pip install 'robust_losses_jax[tf]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (away / "workdir").exists()


# Run in a fresh interpreter: the test process may have TensorFlow loaded by other tests.
NO_TENSORFLOW_PROBE = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from robust_losses_jax import audit, losses
    from robust_losses_jax.commands import find_errors

    logits = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)
    labels = jnp.arange(8) % 3
    for name in ("power", "cutoff", "gce", "ce"):
        jax.grad(lambda z: losses.get_loss(name)(z, labels).mean())(logits)
    flags = ["--model=mlp", "--epochs=1", "--folds=2", "--batch-size=64", "--no-progress"]
    npz, folder, probs, work = sys.argv[1:5]
    assert find_errors.main([f"--dataset=npz:{npz}", *flags, f"--workdir={work}/n"]) == 0
    assert find_errors.main([f"--dataset=folder:{folder}", *flags, f"--workdir={work}/f"]) == 0
    assert find_errors.main(
        [f"--dataset=npz:{npz}", f"--pred-probs={probs}", f"--workdir={work}/p"]) == 0
    labels = np.load(npz)["train_labels"]
    audit.rank_label_issues(labels, np.load(probs))
    print("loaded:", sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"))
    """
)


@pytest.mark.slow
def test_training_and_auditing_never_import_tensorflow(tmp_path):
    """Losses and their gradients, and audits of an npz, a folder of images and --pred-probs,
    run without importing TensorFlow (``sys.modules``), in an environment that has it."""
    from PIL import Image

    npz = tiny_npz(tmp_path / "data.npz")
    with np.load(npz) as data:
        images, labels = data["train_images"], data["train_labels"]
    folder = tmp_path / "folder"
    for i, (image, label) in enumerate(zip(images[:160], labels[:160], strict=True)):
        (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"class{label}" / f"{i}.png")
    probs = np.full((len(labels), 3), 0.1)
    probs[np.arange(len(labels)), labels] = 0.8
    np.save(tmp_path / "probs.npy", probs)
    done = subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW_PROBE, str(npz), str(folder),
         str(tmp_path / "probs.npy"), str(tmp_path / "work")],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().splitlines()[-1] == "loaded: []"


def test_every_module_imports_without_tensorflow():
    """Every module of the package (the commands included) imports, in a fresh interpreter,
    without loading TensorFlow or starting JAX's backends."""
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import robust_losses_jax
        names = [m.name for m in pkgutil.walk_packages(robust_losses_jax.__path__,
                                                       "robust_losses_jax.")]
        for name in names:
            if name != "robust_losses_jax.__main__":  # Runs the command.
                importlib.import_module(name)
        print(len(names), sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-4000:]
    count, loaded = done.stdout.split(maxsplit=1)
    assert int(count) >= 40 and loaded.strip() == "[]", done.stdout


def test_the_project_url_is_one_url():
    """setup.py's url, the README's Colab badge and the notebook's install source agree."""
    url = re.search(r'PROJECT_URL = "([^"]+)"', (ROOT / "setup.py").read_text()).group(1)
    owner_repo = url.removeprefix("https://github.com/")
    readme = (ROOT / "README.md").read_text()
    assert f"colab.research.google.com/github/{owner_repo}/blob/main/notebooks/" in readme
    notebook = (ROOT / "notebooks" / "quickstart.ipynb").read_text()
    assert f"git+{url}" in notebook
    assert "OWNER" not in readme + notebook
