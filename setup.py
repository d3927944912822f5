"""robust_losses_jax: training classifiers robust to label errors, and finding those errors."""

from pathlib import Path

from setuptools import find_packages, setup

# The project's public repository: the notebook's install cell and the README's Colab badge
# point here too (tests/test_install.py checks that they agree).
PROJECT_URL = "https://github.com/robust-losses-jax/robust_losses_jax"

setup(
    name="robust_losses_jax",
    version="0.1.0",
    description=(
        "JAX/Flax losses robust to label errors (power/Blurry, cutoff/Piecewise-zero) and "
        "label-error detection (p_t threshold, Confident Learning, AUM)."
    ),
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    url=PROJECT_URL,
    python_requires=">=3.11,<3.14",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    packages=find_packages(include=["robust_losses_jax", "robust_losses_jax.*"]),
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.4",
        "chex>=0.1.90",
        "orbax-checkpoint>=0.11",
        # The data layer. TensorFlow itself is not required: the losses, the training, and audits
        # of an npz, a folder or --pred-probs never import it. tfds datasets need it: the [tf]
        # extra, or the TensorFlow already installed (Colab's, with its GPU support, is kept).
        "tensorflow-datasets>=4.9",
        "numpy>=1.26",
        "absl-py",
        "tqdm",
        "matplotlib",
        "pillow",  # folder:PATH datasets.
        "importlib_resources",  # tfds needs it to prepare datasets.
        "scikit-learn",  # sklearn_digits, a tiny offline dataset.
    ],
    extras_require={
        # TensorFlow for tfds datasets (tfds prepares and reads them with it). Not needed where
        # TensorFlow is installed already (Colab): pip would keep that one anyway.
        "tf": ["tensorflow>=2.16"],
        "test": ["pytest", "pytest-xdist", "hypothesis", "ruff", "cleanlab>=2.6", "scikit-learn"],
    },
    entry_points={"console_scripts": ["robust-losses=robust_losses_jax.commands.main:main"]},
)
