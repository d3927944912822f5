"""The user's own data: a NumPy ``.npz`` file or a folder of images, read into host splits.

Two dataset specs name them (``--dataset=SPEC``):

- ``npz:PATH``: ``train_images`` uint8 ``[N, H, W]`` or ``[N, H, W, C]`` and ``train_labels``
  (integers ``[N]``) are required. ``num_classes`` or ``class_names`` (``[C]`` strings) are
  optional: without them ``C`` is the largest label plus one. ``test_images``/``test_labels``
  are optional: without them the test split is empty.
- ``folder:PATH``: one sub-folder per class (ImageFolder layout), class names from the folder
  names in sorted order, image files (PNG, JPEG, BMP, GIF, WebP) inside; other files are
  ignored. Images are converted to one shape by a fixed rule (:data:`FOLDER_RULE`). There is no
  test split.

Every problem is one ``ValueError`` line naming the file, the array or folder, and the bad value.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np

from robust_losses_jax.split import Split

NPZ_PREFIX = "npz:"
FOLDER_PREFIX = "folder:"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# The default image side cap for folders: 60,000 RGB images of 64 x 64 hold 737 MB.
MAX_IMAGE_SIDE = 64
FOLDER_RULE = (
    "every image becomes grayscale when all of them are (else RGB, alpha dropped) and is "
    "resized (bilinear) to the most common height x width among them (ties: the larger), scaled "
    f"down, aspect kept, to at most {MAX_IMAGE_SIDE} on a side; --image-size=H[xW] sets it"
)


# The largest image side --image-size accepts.
MAX_IMAGE_SIZE = 1024


def parse_image_size(text: str) -> tuple[int, int]:
    """``"H"`` or ``"HxW"`` as ``(height, width)``; ``ValueError`` (one line) otherwise."""
    parts = str(text).lower().split("x")
    if len(parts) in (1, 2) and all(p.strip().isdigit() and int(p) > 0 for p in parts):
        height, width = int(parts[0]), int(parts[-1])
        if max(height, width) <= MAX_IMAGE_SIZE:
            return height, width
    raise ValueError(
        f"image size {text!r} is not H or HxW (positive integers up to {MAX_IMAGE_SIZE})."
    )


def is_user_dataset(name: str) -> bool:
    return name.startswith((NPZ_PREFIX, FOLDER_PREFIX))


def load_split(name: str, split: str, image_size: str | None = None) -> Split:
    """``split`` (``'train'`` or ``'test'``) of ``npz:PATH`` or ``folder:PATH`` (its images
    resized to ``image_size``, ``"H"`` or ``"HxW"``, where given: folders only).

    A missing test split is an empty :class:`Split` (an npz's has the training images' shape).
    """
    if split not in ("train", "test"):
        raise ValueError(f"{name} has splits 'train' and 'test', not {split!r}.")
    if name.startswith(NPZ_PREFIX):
        return load_npz_split(name.removeprefix(NPZ_PREFIX), split)
    if name.startswith(FOLDER_PREFIX):
        path = name.removeprefix(FOLDER_PREFIX)
        if split == "train":
            return load_folder(path, image_size)
        # No test split: an empty one, without reading every image again for its shape.
        names = tuple(f.name for f in class_folders(path))
        return Split(np.zeros((0, 0, 0, 0), np.uint8), np.zeros(0, np.int32), len(names), names)
    raise ValueError(f"{name!r} is not npz:PATH or folder:PATH.")


def check_labels(
    where: str, array: str, labels: np.ndarray, num_rows: int, *, per: str = "image"
) -> None:
    """``labels`` are integers ``[num_rows]``, one per image (or ``per`` row); else one line."""
    if labels.ndim != 1 or len(labels) != num_rows or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{where}: {array} must be integers [{num_rows}] (one per {per}); got "
            f"{labels.dtype} {list(labels.shape)}."
        )


def check_label_range(where: str, array: str, labels: np.ndarray, num_classes: int) -> None:
    """Every label in ``[0, num_classes)``; else one line naming the first one outside."""
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{where}: {array}[{i}] = {int(labels[i])} is outside [0, {num_classes}) "
            f"({int(bad.sum())} labels are)."
        )


def npz_class_names(where: str, data: np.lib.npyio.NpzFile, labels: np.ndarray) -> tuple[str, ...]:
    """The classes of an open npz: its ``class_names``, else ``num_classes`` or the largest of
    ``labels`` plus one, named by number; ``ValueError`` for fewer than 2."""
    if "class_names" in data.files:
        names = tuple(str(x) for x in data["class_names"])
    else:
        inferred = int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0
        declared = int(data["num_classes"]) if "num_classes" in data.files else inferred
        names = tuple(str(i) for i in range(declared))
    if len(names) < 2:
        raise ValueError(f"{where}: {len(names)} classes; a dataset needs at least 2.")
    return names


def open_npz(path: str | Path) -> np.lib.npyio.NpzFile:
    """The npz at ``path``, opened lazily (no pickles); ``ValueError`` (one line) if unreadable."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        message = f"--dataset=npz:{path}: cannot read it as a .npz file ({error})."
        raise ValueError(message) from None


def load_npz_split(path: str, split: str) -> Split:
    """A split of ``npz:PATH`` (see the module docstring), checked, as host arrays."""
    where = f"npz:{path}"
    with open_npz(path) as data:
        missing = [k for k in ("train_images", "train_labels") if k not in data.files]
        if missing:
            raise ValueError(
                f"{where} lacks {', '.join(missing)}; it needs train_images and train_labels "
                f"(optional: test_images, test_labels, num_classes or class_names); has "
                f"{data.files}."
            )
        arrays = {}
        for key in ("train_images", "train_labels", "test_images", "test_labels"):
            if key in data.files:
                try:
                    arrays[key] = data[key]
                except ValueError:  # An object array: images of mixed shapes, saved as a list.
                    raise ValueError(
                        f"{where}: {key} is an object array (images of mixed shapes?); it must "
                        "be one uint8 array [N, H, W] or [N, H, W, C]."
                    ) from None
        train_images = _check_images(where, "train_images", arrays["train_images"])
        check_labels(where, "train_labels", arrays["train_labels"], len(train_images))
        names = npz_class_names(where, data, arrays["train_labels"])
    num_classes = len(names)
    has_test = "test_images" in arrays or "test_labels" in arrays
    if split == "test" and not has_test:
        return Split(np.zeros((0, *train_images.shape[1:]), np.uint8), np.zeros(0, np.int32),
                     num_classes, names)  # fmt: skip
    if split == "test" and not ("test_images" in arrays and "test_labels" in arrays):
        raise ValueError(f"{where} has only one of test_images and test_labels; pass both or none.")
    images = _check_images(where, f"{split}_images", arrays[f"{split}_images"])
    if images.shape[1:] != train_images.shape[1:]:
        raise ValueError(
            f"{where}: test_images are {list(images.shape[1:])}, train_images "
            f"{list(train_images.shape[1:])}; they must be the same shape."
        )
    labels = arrays[f"{split}_labels"]
    check_labels(where, f"{split}_labels", labels, len(images))
    check_label_range(where, f"{split}_labels", labels, num_classes)
    return Split(images=images, labels=labels.astype(np.int32), num_classes=num_classes,
                 class_names=names)  # fmt: skip


def _check_images(where: str, array: str, images: np.ndarray) -> np.ndarray:
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"{where}: {array} must be uint8 [N, H, W, C] or [N, H, W]; got "
            f"{images.dtype} {list(images.shape)}."
        )
    return images


def class_folders(path: str | Path) -> list[Path]:
    """The class sub-folders of an ImageFolder root, sorted by name (hidden ones skipped)."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"folder:{path} is not a directory.")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < 2:
        raise ValueError(
            f"folder:{path} has {len(folders)} class sub-folder(s); it needs one per class, "
            "at least 2."
        )
    return folders


def folder_files(path: str | Path) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """The image files of ``folder:PATH`` in canonical order (class folders sorted, files sorted
    within each), their labels int32 ``[N]``, and the class names."""
    folders = class_folders(path)
    files: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        found = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not found:
            raise ValueError(
                f"folder:{path}: class folder {folder.name!r} holds no image file "
                f"({', '.join(IMAGE_SUFFIXES)})."
            )
        files += found
        labels += [label] * len(found)
    return files, np.asarray(labels, np.int32), tuple(f.name for f in folders)


def folder_paths(path: str | Path) -> tuple[str, ...]:
    """``[N]`` the files of ``folder:PATH`` relative to it, in the order of :func:`load_folder`."""
    files, _, _ = folder_files(path)
    return tuple(f.relative_to(path).as_posix() for f in files)


def load_folder(path: str | Path, image_size: str | None = None) -> Split:
    """``folder:PATH`` as one split: images converted by :data:`FOLDER_RULE` (or to
    ``image_size``), labels by folder. Two passes: headers first (size and mode, no pixels),
    then each image decoded straight into the result, so memory holds one array, not every
    decoded picture."""
    from PIL import Image, UnidentifiedImageError  # Optional: only folder datasets need it.

    files, labels, names = folder_files(path)
    modes, sizes = [], collections.Counter()
    for file in files:
        try:
            with Image.open(file) as image:
                modes.append(image.mode)
                sizes[(image.height, image.width)] += 1
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise ValueError(f"folder:{path}: cannot read image {file} ({error}).") from None
    gray = all(m in ("1", "L", "LA", "I", "I;16", "F") for m in modes)
    height, width = (
        parse_image_size(image_size)
        if image_size
        else capped_size(max(sizes, key=lambda s: (sizes[s], s[0] * s[1], s)))
    )
    images = np.empty((len(files), height, width, 1 if gray else 3), np.uint8)
    for i, file in enumerate(files):
        try:
            with Image.open(file) as image:
                image.load()
                images[i] = _convert(image, gray, height, width)
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise ValueError(f"folder:{path}: cannot read image {file} ({error}).") from None
    return Split(images=images, labels=labels, num_classes=len(names), class_names=names)


def capped_size(size: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` scaled down, aspect kept, so neither side exceeds
    :data:`MAX_IMAGE_SIDE` (a size the models train at and 60,000 RGB images fit in memory)."""
    height, width = size
    scale = min(1.0, MAX_IMAGE_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _convert(picture, gray: bool, height: int, width: int) -> np.ndarray:
    """One PIL image as uint8 ``[height, width, 1 or 3]`` (:data:`FOLDER_RULE`)."""
    from PIL import Image  # Optional: only folder datasets need it.

    if picture.mode in ("I", "I;16", "F"):  # 16-bit or float grayscale: scale to 8 bits.
        values = np.asarray(picture, np.float64)
        top = values.max() or 1.0
        picture = Image.fromarray((values * (255.0 / top)).round().astype(np.uint8))
    picture = picture.convert("L" if gray else "RGB")
    if (picture.height, picture.width) != (height, width):
        picture = picture.resize((width, height), Image.BILINEAR)
    array = np.asarray(picture, np.uint8)
    return array[..., None] if gray else array
