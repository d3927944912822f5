"""The PyTorch reference that the benchmarks compare the JAX project against.

"The authors' training loop": eager PyTorch, one optimiser step at a time, with the same models,
optimiser (Adam), batch size and loss (the power loss; ``gamma = tau = 0`` is cross-entropy) as
``robust_losses_jax``. Data are pre-loaded into float tensors and indexed per batch, which is the
*fast* way to feed an eager loop (no ``DataLoader`` worker processes).

The models copy the architectures in ``robust_losses_jax/models`` and flax's default
initialisers (LeCun normal kernels, zero biases), so that the comparison is about the training
loop, not the initialisation. Layouts differ: the JAX models take NHWC inputs, these take NCHW.

Imported only by benchmark scripts; the library never imports torch. Install torch with
``requirements-bench.txt`` (see the comment there).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from torch import nn

MODELS = ("small_cnn", "resnet18")


# --------------------------------------------------------------------------------------------------
# Models.
# --------------------------------------------------------------------------------------------------


def _lecun_normal_(weight: torch.Tensor) -> None:
    """flax's ``lecun_normal``: truncated normal (+-2 std), variance ``1 / fan_in``."""
    fan_in = weight[0].numel()  # [out, in] or [out, in, kh, kw]
    std = (1.0 / fan_in) ** 0.5 / 0.87962566103423978  # std of a N(0, 1) truncated at +-2
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def _flax_init_(module: nn.Module) -> None:
    """Re-initialise convs and linears as flax does: LeCun normal kernels, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            _lecun_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SmallCNN(nn.Module):
    """The Keras MNIST example CNN. ``[B, C, H, W] float -> [B, num_classes]``.

    conv 3x3x32, ReLU, conv 3x3x64, ReLU (both ``'VALID'``), max-pool 2x2, dropout 0.25, flatten,
    dense 128, ReLU, dropout 0.5, dense ``num_classes``: 1,199,882 parameters on 28x28x1 inputs
    with 10 classes, as ``robust_losses_jax.models.small.SmallCNN``.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        pooled = (image_size - 4) // 2
        self.conv0 = nn.Conv2d(in_channels, 32, 3)
        self.conv1 = nn.Conv2d(32, 64, 3)
        self.dropout0 = nn.Dropout(0.25)
        self.dense = nn.Linear(64 * pooled * pooled, 128)
        self.dropout1 = nn.Dropout(0.5)
        self.head = nn.Linear(128, num_classes)
        _flax_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]``."""
        x = F.relu(self.conv0(x))
        x = F.relu(self.conv1(x))
        x = self.dropout0(F.max_pool2d(x, 2))
        x = torch.flatten(x, 1)
        x = self.dropout1(F.relu(self.dense(x)))
        return self.head(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    # flax momentum 0.9 (weight of the old running average) is torch momentum 0.1.
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


class BasicBlock(nn.Module):
    """Two 3x3 convs; a 1x1 conv + BN projection shortcut when the shape changes."""

    def __init__(self, in_channels: int, filters: int, stride: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels, filters, 3, stride, padding=1, bias=False)
        self.bn0 = _bn(filters)
        self.conv1 = nn.Conv2d(filters, filters, 3, 1, padding=1, bias=False)
        self.bn1 = _bn(filters)
        nn.init.zeros_(self.bn1.weight)  # each block starts as the identity (Goyal et al. 2017)
        self.proj: nn.Module | None = None
        if stride != 1 or in_channels != filters:
            self.proj = nn.Sequential(
                nn.Conv2d(in_channels, filters, 1, stride, bias=False), _bn(filters)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, filters, H / stride, W / stride]``."""
        y = F.relu(self.bn0(self.conv0(x)))
        y = self.bn1(self.conv1(y))
        residual = x if self.proj is None else self.proj(x)
        return F.relu(residual + y)


class ResNet18(nn.Module):
    """CIFAR ResNet-18, as ``robust_losses_jax.models.resnet.ResNet18`` (``stem="cifar"``).

    3x3 stride-1 stem conv (no bias) + BN + ReLU, no max-pool; basic blocks (2, 2, 2, 2) with
    64 * 2**i filters, stride 2 at the first block of stages i > 0; global average pool and a
    linear head. ``[B, C, H, W] float -> [B, num_classes]``.
    """

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv_init = nn.Conv2d(in_channels, 64, 3, 1, padding=1, bias=False)
        self.bn_init = _bn(64)
        blocks: list[nn.Module] = []
        channels = 64
        for i, size in enumerate((2, 2, 2, 2)):
            for j in range(size):
                filters = 64 * 2**i
                blocks.append(BasicBlock(channels, filters, 2 if i > 0 and j == 0 else 1))
                channels = filters
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, num_classes)
        _flax_init_(self)  # leaves the BN scales (ones, or zeros where set above) alone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]``."""
        x = F.relu(self.bn_init(self.conv_init(x)))
        x = self.blocks(x)
        return self.head(x.mean(dim=(2, 3)))


def make_model(model_name: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """``"small_cnn"`` or ``"resnet18"``, freshly initialised from torch's global RNG."""
    if model_name == "small_cnn":
        return SmallCNN(num_classes, in_channels, image_size)
    if model_name == "resnet18":
        return ResNet18(num_classes, in_channels)
    raise ValueError(f"Unknown model {model_name!r}; available: {', '.join(MODELS)}.")


# --------------------------------------------------------------------------------------------------
# Loss and training loop.
# --------------------------------------------------------------------------------------------------


def power_loss(
    logits: torch.Tensor, labels: torch.Tensor, gamma: float, tau: float
) -> torch.Tensor:
    """Mean of ``-sg(p_t)**gamma * log p_t``, zero where ``p_t < tau``; ``gamma = tau = 0``: CE."""
    log_pt = F.log_softmax(logits.float(), dim=-1).gather(1, labels[:, None]).squeeze(1)
    loss = -log_pt
    if gamma != 0.0 or tau != 0.0:
        pt = log_pt.detach().exp()
        if gamma != 0.0:
            loss = pt**gamma * loss
        if tau != 0.0:
            loss = torch.where(pt >= tau, loss, torch.zeros_like(loss))
    return loss.mean()


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    gamma: float = 0.0,
    tau: float = 0.0,
) -> torch.Tensor:
    """One eager step: zero_grad, forward, loss, backward, step. Returns the (unsynced) loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = power_loss(model(x), y, gamma, tau)
    loss.backward()
    optimizer.step()
    return loss


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    *,
    gamma: float = 0.0,
    tau: float = 0.0,
    generator: torch.Generator,
    device: torch.device | str,
) -> int:
    """One shuffled epoch over pre-loaded, normalised ``images [N, C, H, W]`` float.

    Shuffles with ``torch.randperm(generator=...)``, drops the last incomplete batch and takes one
    eager step per batch. Returns the number of examples trained on.
    """
    model.train()
    num_batches = images.shape[0] // batch_size
    order = torch.randperm(images.shape[0], generator=generator)
    for b in range(num_batches):
        index = order[b * batch_size : (b + 1) * batch_size].to(images.device)
        x = images[index].to(device, non_blocking=True)
        y = labels[index].to(device, non_blocking=True)
        train_step(model, optimizer, x, y, gamma=gamma, tau=tau)
    return num_batches * batch_size


def predict_proba(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Softmax probabilities ``[N, num_classes]`` float32, in eval mode, without gradients."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(device)
            out.append(F.softmax(model(x).float(), dim=-1).cpu())
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------------------------------
# Data preparation and benchmarks.
# --------------------------------------------------------------------------------------------------


def channel_stats(images_uint8_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images scaled to [0, 1], as in the JAX project."""
    pixels = images_uint8_nhwc.reshape(-1, images_uint8_nhwc.shape[-1]).astype(np.float64) / 255.0
    return pixels.mean(0).astype(np.float32), np.maximum(pixels.std(0), 1e-3).astype(np.float32)


def to_normalised_nchw(
    images_uint8_nhwc: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` -> float32 ``[N, C, H, W]``, scaled to [0, 1] and standardised."""
    x = torch.from_numpy(np.ascontiguousarray(images_uint8_nhwc)).permute(0, 3, 1, 2).float()
    x = (x / 255.0 - torch.from_numpy(mean)[:, None, None]) / torch.from_numpy(std)[:, None, None]
    return x.contiguous()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(
    model_name: str,
    *,
    batch_size: int,
    steps: int,
    image_size: int,
    channels: int,
    num_classes: int,
    warmup_steps: int,
    repeats: int,
    threads: int | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Training examples/second of the eager loop on synthetic data (Adam lr 1e-3, CE loss).

    The data are random uint8 images, normalised once and pre-loaded (a pool of at most 16
    batches, re-shuffled per repeat), each batch gathered by index as in :func:`train_epoch`.
    ``warmup_steps`` untimed steps, then ``repeats`` timed runs of ``steps`` steps each.
    ``threads`` sets ``torch.set_num_threads`` for the call (restored after); ``None`` keeps
    torch's default.

    Returns a dict: ``examples_per_second`` (one per repeat; report the median),
    ``warmup_seconds``, ``threads`` (as used), and the settings.
    """
    device = torch.device(device)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        pool = batch_size * min(steps, 16)
        raw = torch.randint(
            0, 256, (pool, image_size, image_size, channels), dtype=torch.uint8,
            generator=generator,
        ).numpy()  # fmt: skip
        images = to_normalised_nchw(raw, *channel_stats(raw)).to(device)
        labels = torch.randint(0, num_classes, (pool,), generator=generator).to(device)
        model = make_model(model_name, num_classes, channels, image_size).to(device)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        batches_in_pool = pool // batch_size

        def run(num_steps: int) -> float:
            order = torch.randperm(pool, generator=generator).to(device)
            start = time.perf_counter()
            for s in range(num_steps):
                b = s % batches_in_pool
                index = order[b * batch_size : (b + 1) * batch_size]
                train_step(model, optimizer, images[index], labels[index])
            _sync(device)
            return time.perf_counter() - start

        warmup_seconds = run(warmup_steps) if warmup_steps > 0 else 0.0
        rates = [steps * batch_size / run(steps) for _ in range(repeats)]
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "framework": f"torch {torch.__version__} eager",
        "model": model_name,
        "device": str(device),
        "batch_size": batch_size,
        "steps": steps,
        "image_size": image_size,
        "channels": channels,
        "num_classes": num_classes,
        "threads": used_threads,
        "warmup_steps": warmup_steps,
        "warmup_seconds": warmup_seconds,
        "examples_per_second": rates,
    }


def kfold_protocol(
    images_uint8_nhwc: np.ndarray,
    labels: np.ndarray,
    *,
    folds: int = 5,
    fold_of: np.ndarray,
    epochs: int,
    batch_size: int,
    lr: float = 1e-3,
    seed: int = 0,
    model_name: str = "small_cnn",
    num_classes: int | None = None,
    gamma: float = 0.0,
    tau: float = 0.0,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Out-of-sample probabilities ``[N, num_classes]`` float32, rows in the input order.

    For each fold ``k``: a fresh model, trained with Adam(``lr``) for ``epochs`` epochs on the
    examples with ``fold_of != k``, predicts the held-out rows. Images are normalised with the
    per-channel statistics of all ``N`` images, as the JAX project does. ``num_classes`` defaults
    to ``labels.max() + 1``.
    """
    device = torch.device(device)
    labels = np.asarray(labels)
    fold_of = np.asarray(fold_of)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    _, height, _, channels = images_uint8_nhwc.shape
    images = to_normalised_nchw(images_uint8_nhwc, *channel_stats(images_uint8_nhwc))
    targets = torch.from_numpy(labels.astype(np.int64))
    out = np.zeros((len(labels), num_classes), np.float32)
    for k in range(folds):
        held_out = fold_of == k
        train_rows = torch.from_numpy(np.flatnonzero(~held_out))
        torch.manual_seed(seed * 1000 + k)
        generator = torch.Generator().manual_seed(seed * 1000 + k)
        model = make_model(model_name, num_classes, channels, height).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        train_images = images[train_rows].to(device)
        train_labels = targets[train_rows].to(device)
        for _ in range(epochs):
            train_epoch(
                model, optimizer, train_images, train_labels, batch_size,
                gamma=gamma, tau=tau, generator=generator, device=device,
            )  # fmt: skip
        out[held_out] = predict_proba(model, images[torch.from_numpy(held_out)])
    return out
