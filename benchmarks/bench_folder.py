"""Host memory and time of a folder audit: JPEGs of mixed sizes, read at one size.

Writes ``--files`` Fashion-MNIST training images as JPEGs into one folder per class, each
scaled to a size drawn from :data:`SIZES` (square and not, 28 to 160 pixels a side; the most
common 56x56), then runs ``robust-losses find-errors --dataset=folder:DIR`` at its defaults but
``--epochs`` in a child process and prints its wall time and peak host memory (the child's
``ru_maxrss``). The folder has no test split, so the audit holds a tenth of it out.

    python -m benchmarks.bench_folder                       # 20,000 files, 1 epoch
    python -m benchmarks.bench_folder --files=2000 --epochs=1 --image-size=28
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from robust_losses_jax import input_pipeline

# (height, width) and weight: most files at 56x56, the rest spread over other shapes.
SIZES = (((56, 56), 4), ((28, 28), 2), ((64, 48), 1), ((96, 96), 1), ((120, 80), 1),
         ((160, 160), 1))  # fmt: skip


def write_folder(root: Path, files: int, seed: int = 0) -> dict[tuple[int, int], int]:
    """``files`` JPEGs under ``root/<class>/``; returns how many of each size."""
    train = input_pipeline.load_split("fashion_mnist", "train")
    rng = np.random.default_rng(seed)
    shapes = [s for s, _ in SIZES]
    weights = np.array([w for _, w in SIZES], float)
    picks = rng.choice(len(shapes), files, p=weights / weights.sum())
    for name in train.class_names:
        (root / name.replace("/", "-")).mkdir(parents=True, exist_ok=True)
    for i in range(files):
        height, width = shapes[picks[i]]
        image = Image.fromarray(train.images[i, ..., 0]).resize((width, height))
        name = train.class_names[train.labels[i]].replace("/", "-")
        image.save(root / name / f"{i:06d}.jpg", quality=90)
    return {shapes[k]: int((picks == k).sum()) for k in range(len(shapes))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--image-size", default=None, help="passed on (default: the audit's)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "images"
        counts = write_folder(root, args.files)
        size = sum(p.stat().st_size for p in root.rglob("*.jpg"))
        shown = ", ".join(f"{h}x{w}: {n}" for (h, w), n in counts.items())
        print(f"{args.files} JPEGs ({size / 2**20:.0f} MiB on disk; {shown})")
        command = [sys.executable, "-m", "robust_losses_jax", "find-errors",
                   f"--dataset=folder:{root}", f"--workdir={Path(scratch) / 'audit'}",
                   f"--epochs={args.epochs}", "--no-progress"]  # fmt: skip
        if args.image_size:
            command.append(f"--image-size={args.image_size}")
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(done.stderr)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        print(done.stdout.strip())
        print(f"folder audit: {seconds:.0f} s wall, peak host memory {peak:.2f} GB")


if __name__ == "__main__":
    main()
