"""robust_losses_jax: training classifiers robust to label errors, and finding those errors."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="robust_losses_jax",
    version="0.1.0",
    description=(
        "JAX/Flax losses robust to label errors (power/Blurry, cutoff/Piecewise-zero) and "
        "label-error detection (p_t threshold, Confident Learning, AUM)."
    ),
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["robust_losses_jax", "robust_losses_jax.*"]),
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.4",
        "chex>=0.1.90",
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets>=4.9",
        # tfds prepares and reads datasets with TensorFlow; the CPU build is enough for that.
        "tensorflow-cpu>=2.16",
        "numpy>=1.26",
        "absl-py",
        "tqdm",
        "matplotlib",
        "importlib_resources",  # tfds needs it to prepare datasets.
        "scikit-learn",  # sklearn_digits, a tiny offline dataset.
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "hypothesis", "ruff", "cleanlab>=2.6", "scikit-learn"],
    },
)
