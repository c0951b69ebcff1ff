"""Per-architecture preprocessing as in Davila et al. (2024) §3.4.

Shorter side resized to 232 (ResNet) or 256 (DenseNet, VGG), centre crop 224, ImageNet mean/std, no
augmentation. ``image_size`` scales both sizes together (e.g. 64 for CPU work: resize 66 or 73, crop 64).
The geometric part (resize + crop, to uint8) is what the cache stores; normalisation is applied per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from shiftkit.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained with TensorFlow's (x - 127) / 128 on 0..255 inputs.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

PAPER_CROP = 224
RESIZE_FOR_CROP_224 = {"resnet50": 232, "resnet18": 256, "densenet121": 256, "vgg19": 256, "efficientnet_lite0": 256}
# One rule for every command that embeds or trains (finetune, compare, diagnose, audit, harmonize's shift measurement):
# below this, VGG's and DenseNet's pooling stages run out of pixels.
MIN_IMAGE_SIZE = 32


def check_image_size(image_size: int | None, option: str = "--image-size") -> None:
    """Refuse a crop size below :data:`MIN_IMAGE_SIZE` (``None``: the architecture's default, 224)."""
    if image_size is not None and image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"{option} must be at least {MIN_IMAGE_SIZE} (got {image_size})")


@dataclass(frozen=True)
class Preprocessing:
    resize: int
    crop: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def for_arch(cls, arch: str, image_size: int | None = None) -> "Preprocessing":
        check_image_size(image_size)
        base = RESIZE_FOR_CROP_224.get(arch, 256)
        crop = image_size or PAPER_CROP
        resize = max(crop, round(crop * base / PAPER_CROP))
        if arch.startswith("efficientnet_lite"):
            return cls(resize=resize, crop=crop, mean=LITE_MEAN, std=LITE_STD)
        return cls(resize=resize, crop=crop)

    def key(self) -> str:
        """Identifies the geometric part, which is what cached images depend on."""
        return f"r{self.resize}c{self.crop}"

    def geometric(self, image: np.ndarray) -> torch.Tensor:
        """``H x W [x 3]`` float in [0,1] -> ``C x crop x crop`` uint8 (C = 1 or 3), antialiased resize."""
        tensor = torch.from_numpy(image)
        tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        height, width = tensor.shape[1:]
        scale = self.resize / min(height, width)
        size = (max(self.crop, round(height * scale)), max(self.crop, round(width * scale)))
        if size != (height, width):
            tensor = F.interpolate(tensor[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        top, left = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
        tensor = tensor[:, top : top + self.crop, left : left + self.crop]
        return (tensor.clamp(0, 1) * 255.0).round().to(torch.uint8).contiguous()

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 ``N x C x H x W`` (C = 1 or 3) -> float, 3 channels, ImageNet-normalised."""
        batch = batch.float().div_(255.0)
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        return (batch - mean) / std
