"""Input perturbations: colour changes in HSV space, grayscale, brightness, noise, occlusion.

Every perturbation is a callable `perturb(images, mask=None, generator=None)`
on a batch of images in [0, 1] (NCHW) on any device, returning a new batch of
the same shape. `mask` (broadcastable to N1HW, bool or float in [0, 1])
restricts the change to a region: `out = mask * perturbed + (1 - mask) * images`,
so pixels outside the mask are returned unchanged, bit for bit. Random
perturbations draw from `generator` when given, else from their own generator
seeded with the `seed` option, so that the same calls give the same results.
They are registered by name through the core's `probekit_register_perturbations`
hook, so probes find them with `run.perturbation(name, **options)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from probekit_perturb.color import hsv_to_rgb, luminance, rgb_to_hsv

#: named hues in degrees
COLORS: dict[str, float] = {
    "red": 0.0,
    "yellow": 60.0,
    "green": 120.0,
    "cyan": 180.0,
    "blue": 240.0,
    "magenta": 300.0,
}


def as_mask(mask: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """A float mask (N or 1, 1, H, W) on the images' device from (H, W), (N, H, W) or (N, 1, H, W)."""
    m = mask
    if m.dim() == 2:
        m = m[None, None]
    elif m.dim() == 3:
        m = m[:, None]
    if (
        m.dim() != 4
        or m.shape[1] != 1
        or tuple(m.shape[-2:]) != tuple(images.shape[-2:])
        or m.shape[0] not in (1, images.shape[0])
    ):
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not fit images of shape "
            f"{tuple(images.shape)}; give (H, W), (N, H, W) or (N, 1, H, W) with the images' H, W"
        )
    return m.to(device=images.device, dtype=images.dtype)


class Perturbation:
    """Base class: subclasses implement `apply` on the whole batch; masking is done here."""

    #: registered name
    name: str = "perturbation"
    #: whether :meth:`apply` draws random numbers
    random: bool = False

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._generator: torch.Generator | None = None

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def options(self) -> dict[str, object]:
        """The options this perturbation was made with (for labels and reports)."""
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{self.name}({opts})"

    def __call__(
        self, images: torch.Tensor, mask: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(
                f"perturbation '{self.name}' takes a batch of images (N, C, H, W), got "
                f"{getattr(images, 'shape', type(images).__name__)}"
            )
        if not images.is_floating_point():
            raise ValueError(f"perturbation '{self.name}' takes float images in [0, 1], got {images.dtype}")
        if generator is None and self.random:
            if self._generator is None:
                self._generator = torch.Generator().manual_seed(self.seed)
            generator = self._generator
        out = self.apply(images, generator)  # type: ignore[arg-type]
        if mask is not None:
            m = as_mask(mask, images)
            out = m * out + (1 - m) * images
            # exactly the input where the mask is 0 (m * out may be -0.0 or lose nothing, but be explicit)
            out = torch.where(m > 0, out, images)
        return out


def _randn(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    # draw on the generator's device, so that a CPU generator drives CUDA batches identically
    return torch.randn(shape, generator=generator, device=generator.device).to(like.device, like.dtype)


def _randint(high: int, shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=generator, device=generator.device).to(device)


class HueSet(Perturbation):
    """Set the hue of every pixel to one colour, keeping saturation and value (gray pixels stay gray)."""

    name = "hue-set"

    def __init__(self, color: str | float = "red", seed: int = 0):
        super().__init__(seed)
        if isinstance(color, str):
            key = color.lower()
            if key not in COLORS:
                raise ValueError(
                    f"hue-set: unknown colour '{color}'; use one of {', '.join(COLORS)} "
                    "or a hue in degrees (0 = red, 120 = green, 240 = blue)"
                )
            self.degrees = COLORS[key]
        else:
            self.degrees = float(color)
        self.color = color

    def options(self) -> dict[str, object]:
        return {"color": self.color}

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        hsv = rgb_to_hsv(images)
        h = torch.full_like(hsv[:, :1], (self.degrees / 360.0) % 1.0)
        return hsv_to_rgb(torch.cat([h, hsv[:, 1:]], 1))


class HueRotate(Perturbation):
    """Rotate the hue of every pixel by `degrees` (360 is the identity)."""

    name = "hue-rotate"

    def __init__(self, degrees: float = 120.0, seed: int = 0):
        super().__init__(seed)
        self.degrees = float(degrees)

    def options(self) -> dict[str, object]:
        return {"degrees": self.degrees}

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        hsv = rgb_to_hsv(images)
        h = (hsv[:, :1] + self.degrees / 360.0) % 1.0
        return hsv_to_rgb(torch.cat([h, hsv[:, 1:]], 1))


class Grayscale(Perturbation):
    """Replace colour by its luma (BT.601), kept as 3 channels; one-channel images come back unchanged."""

    name = "grayscale"

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if images.shape[1] == 1:
            return images.clone()
        y = luminance(images).clamp(0, 1)
        return y.expand(-1, 3, -1, -1).clone()


class Brightness(Perturbation):
    """Scale brightness: multiply the pixels (and so HSV value) by `factor`, clipped to [0, 1]."""

    name = "brightness"

    def __init__(self, factor: float = 0.5, seed: int = 0):
        super().__init__(seed)
        self.factor = float(factor)

    def options(self) -> dict[str, object]:
        return {"factor": self.factor}

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return (images * self.factor).clamp(0, 1)


class Saturation(Perturbation):
    """Scale HSV saturation by `factor` (0: grayscale by HSV value), clipped to [0, 1]."""

    name = "saturation"

    def __init__(self, factor: float = 0.5, seed: int = 0):
        super().__init__(seed)
        self.factor = float(factor)

    def options(self) -> dict[str, object]:
        return {"factor": self.factor}

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        hsv = rgb_to_hsv(images)
        s = (hsv[:, 1:2] * self.factor).clamp(0, 1)
        return hsv_to_rgb(torch.cat([hsv[:, :1], s, hsv[:, 2:]], 1))


class Noise(Perturbation):
    """Add Gaussian noise of standard deviation `std`, clipped to [0, 1] unless `clip` is false."""

    name = "noise"
    random = True

    def __init__(self, std: float = 0.1, clip: bool = True, seed: int = 0):
        super().__init__(seed)
        self.std = float(std)
        self.clip = clip

    def options(self) -> dict[str, object]:
        return {"std": self.std}

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        out = images + self.std * _randn(tuple(images.shape), generator, images)
        return out.clamp(0, 1) if self.clip else out


class Occlusion(Perturbation):
    """Paint `count` square patches of side `size` pixels at random places of each image."""

    name = "occlusion"
    random = True

    def __init__(self, size: int = 8, count: int = 1, value: float = 0.0, seed: int = 0):
        super().__init__(seed)
        self.size, self.count, self.value = int(size), int(count), float(value)

    def options(self) -> dict[str, object]:
        return {"size": self.size, "count": self.count, "value": self.value}

    def patch_mask(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The (N, 1, H, W) bool mask of the patches this call paints."""
        n, _, h, w = images.shape
        sh, sw = min(self.size, h), min(self.size, w)
        top = _randint(h - sh + 1, (n, self.count), generator, images.device)
        left = _randint(w - sw + 1, (n, self.count), generator, images.device)
        rows = torch.arange(h, device=images.device)
        cols = torch.arange(w, device=images.device)
        in_rows = (rows >= top[..., None]) & (rows < top[..., None] + sh)  # N, count, H
        in_cols = (cols >= left[..., None]) & (cols < left[..., None] + sw)  # N, count, W
        return (in_rows[..., :, None] & in_cols[..., None, :]).any(1, keepdim=True)

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        patches = self.patch_mask(images, generator)
        return torch.where(patches, torch.full_like(images, self.value), images)


PERTURBATIONS: dict[str, type[Perturbation]] = {
    cls.name: cls for cls in (HueSet, HueRotate, Grayscale, Brightness, Saturation, Noise, Occlusion)
}


def box_mask(region: list[float] | tuple[float, ...], images: torch.Tensor) -> torch.Tensor:
    """A (1, 1, H, W) bool mask of the box `[top, left, height, width]` (fractions of the image size)."""
    h, w = images.shape[-2:]
    top, left, height, width = region
    r0, c0 = int(round(top * h)), int(round(left * w))
    r1, c1 = max(r0 + 1, int(round((top + height) * h))), max(c0 + 1, int(round((left + width) * w)))
    mask = torch.zeros(1, 1, h, w, dtype=torch.bool, device=images.device)
    mask[..., r0:r1, c0:c1] = True
    return mask


class InRegion:
    """A perturbation restricted to a box of every image: `perturb(images, mask=box, generator=...)`."""

    def __init__(self, perturb: Callable[..., torch.Tensor], region: list[float] | tuple[float, ...]):
        self.perturb, self.region = perturb, tuple(region)

    def __call__(
        self, images: torch.Tensor, mask: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        box = box_mask(self.region, images)
        if mask is not None:
            box = box & (as_mask(mask, images) > 0)
        return self.perturb(images, mask=box, generator=generator)
