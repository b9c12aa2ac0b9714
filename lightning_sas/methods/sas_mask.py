"""The mask parameter of SaS: its seeded initial noise, the importance map it makes, and its Adam step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_sas.methods.baselines import gaussian_blur

INIT_NOISE_STD = 0.01
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def initial_mask(batch: int, height: int, width: int, mask_scale: float, seed: int, device: torch.device) -> Tensor:
    """The mask parameter ``[B, 1, h, w]`` before the first step: seeded noise, the same for every image.

    ``h, w`` are the image's ``height, width`` times ``mask_scale`` (at least 1).
    """
    mask_height = max(1, round(height * mask_scale))
    mask_width = max(1, round(width * mask_scale))
    # The same noise for every image (a local CPU generator), so image i's result does not
    # depend on its position in the batch, nor on the device.
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((1, 1, mask_height, mask_width), generator=generator) * INIT_NOISE_STD
    return noise.to(device).expand(batch, -1, -1, -1).contiguous()


def importance_map(mask: Tensor, smoothing: int, size: tuple[int, int], temperature: float) -> Tensor:
    """``e = SoftPool(GaussianSmooth(m))`` at the image size, ``[B, 1, H, W]``, float32 always.

    Never under autocast: ``e = exp(temperature · m)`` sits near 1 with a spread of about
    ``temperature ×`` the mask's (0.003 when total variation keeps the mask flat); bfloat16's
    steps near 1 are 0.004-0.008, so a bfloat16 smoothing convolution made ``e`` constant
    and the normalised map all zeros.
    """
    with torch.autocast(mask.device.type, enabled=False):
        smoothed = gaussian_blur(mask, smoothing, smoothing / 6)
        importance = F.avg_pool2d(torch.exp(temperature * smoothed), 3, stride=1, padding=1, count_include_pad=False)
        if importance.shape[-2:] != size:
            importance = F.interpolate(importance, size=size, mode="bilinear", align_corners=False)
    return importance


def adam_update(mask: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int, lr: float) -> Tensor:
    """Adam step ``step`` (1-based) on the detached ``mask``, in place; the moments are updated in place too.

    Adam by hand: elementwise, so each image's update is independent of the batch, and no
    optimizer state object or host-side step counter is involved.
    """
    beta1, beta2 = ADAM_BETAS
    with torch.no_grad():
        mask = mask.detach()
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denominator = (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(ADAM_EPS)
        mask.addcdiv_(exp_avg, denominator, value=-lr / (1 - beta1**step))
    return mask
