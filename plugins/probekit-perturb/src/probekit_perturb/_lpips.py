"""The `lpips` metric: the `lpips` package's LPIPS with its backbone loaded from a local file.

`lpips.LPIPS(net=...)` normally downloads the torchvision ImageNet backbone at
construction. Offline, we build it with `pnet_rand=True` (no download) and copy
the backbone weights from a torchvision state dict on disk; the calibrated linear
layers come from the `lpips` package itself, as usual.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from probekit import Metric, SpecError

ENV = "PROBEKIT_LPIPS_WEIGHTS"
#: torchvision architecture behind each lpips net, and the file names its weights usually have
BACKBONES: dict[str, tuple[str, str]] = {
    "alex": ("alexnet", "AlexNet_Weights"),
    "vgg": ("vgg16", "VGG16_Weights"),
    "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights"),
}


def torchvision_file_name(net: str) -> str:
    """The file name torchvision gives the ImageNet weights of `net`'s backbone."""
    import torchvision.models as tvm

    enum = getattr(tvm, BACKBONES[net][1])
    return Path(enum.IMAGENET1K_V1.url).name


def _missing_message(net: str, tried: list[str]) -> str:
    arch = BACKBONES[net][0]
    hub = Path(torch.hub.get_dir()) / "checkpoints" / torchvision_file_name(net)
    tried_text = f" Looked in: {'; '.join(tried)}." if tried else ""
    return (
        f"LPIPS(net='{net}') needs the ImageNet weights of torchvision's {arch} backbone, and none were "
        f"found.{tried_text} Give a state dict of torchvision's `{arch}()` (keys 'features.*'; the "
        f"features-only file `{arch}_features.pth` is enough) as `weights: PATH` in the metric's spec "
        f"entry (`metrics: [{{type: lpips, net: {net}, weights: PATH}}]`), or set {ENV}=PATH (a file, or "
        f"a folder holding `{arch}*.pth`), or put torchvision's own file at {hub} (torchvision downloads it "
        f"there when online; `download: true` lets this metric do so)."
    )


def find_weights(net: str, weights: str | Path | None = None) -> Path | None:
    """The backbone weight file for `net`: `weights`, else `$PROBEKIT_LPIPS_WEIGHTS`, else torch hub's
    cache; `None` when there is none. A given path that does not exist is an error."""
    arch = BACKBONES[net][0]
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise SpecError(
                f"LPIPS backbone weights not found: {path}",
                path="metrics.weights",
                fix=_missing_message(net, [str(path)]),
            )
        return path
    tried = []
    env = os.environ.get(ENV)
    if env:
        path = Path(env).expanduser()
        if path.is_dir():
            found = sorted(path.glob(f"{arch}*.pth")) + sorted(path.glob(f"{arch}*.safetensors"))
            if found:
                return found[0]
            tried.append(f"{ENV}={path} (no {arch}*.pth in it)")
        elif path.is_file():
            return path
        else:
            tried.append(f"{ENV}={path} (does not exist)")
        raise SpecError(f"LPIPS backbone weights not found through {ENV}", path=ENV, fix=_missing_message(net, tried))
    hub = Path(torch.hub.get_dir()) / "checkpoints" / torchvision_file_name(net)
    return hub if hub.is_file() else None


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SpecError(
            f"{path} is not a state dict (a dict of tensors)",
            path="metrics.weights",
            fix="Save the backbone with torch.save(model.state_dict(), path).",
        )
    return state


def load_backbone(loss_fn: Any, path: Path, net: str) -> None:
    """Copy torchvision `features.*` weights from `path` into the slices of an `lpips.LPIPS`."""
    state = _load_state_dict(path)
    if not any(k.startswith("features.") for k in state):  # a bare Sequential's state dict
        state = {f"features.{k}": v for k, v in state.items()}
    target = loss_fn.net.state_dict()
    new: dict[str, torch.Tensor] = {}
    missing = []
    for key in target:
        # lpips slices keep torchvision's feature indices as child names: slice2.3.weight <- features.3.weight
        _, _, rest = key.partition(".")
        source = f"features.{rest}"
        if source not in state:
            missing.append(source)
            continue
        if tuple(state[source].shape) != tuple(target[key].shape):
            raise SpecError(
                f"{path}: '{source}' has shape {tuple(state[source].shape)}, LPIPS(net='{net}') "
                f"expects {tuple(target[key].shape)}",
                path="metrics.weights",
                fix=f"Give the weights of torchvision's {BACKBONES[net][0]} for net '{net}'.",
            )
        new[key] = state[source]
    if missing:
        raise SpecError(
            f"{path} lacks {len(missing)} backbone tensors of LPIPS(net='{net}'), e.g. {', '.join(missing[:3])}",
            path="metrics.weights",
            fix=f"Give the weights of torchvision's {BACKBONES[net][0]} (keys 'features.*').",
        )
    loss_fn.net.load_state_dict(new)


def build_lpips(net: str = "alex", weights: str | Path | None = None, download: bool = False) -> Any:
    """An `lpips.LPIPS` in eval mode with ImageNet backbone weights, built without network access.

    Weight lookup: `weights`, then `$PROBEKIT_LPIPS_WEIGHTS`, then torch hub's cache; with
    `download=True` torchvision fetches the file into that cache when none is found.
    """
    import lpips

    if net not in BACKBONES:
        raise SpecError(f"unknown LPIPS net '{net}'", path="metrics.net", fix="Use alex, vgg or squeeze.")
    path = find_weights(net, weights)
    if path is None:
        if not download:
            raise SpecError(
                f"no weights for LPIPS(net='{net}')",
                path="metrics.weights",
                fix=_missing_message(net, [str(Path(torch.hub.get_dir()) / "checkpoints")]),
            )
        import torchvision.models as tvm

        getattr(tvm, BACKBONES[net][1]).IMAGENET1K_V1.get_state_dict(progress=False)
        path = Path(torch.hub.get_dir()) / "checkpoints" / torchvision_file_name(net)
    # pnet_rand=True skips the download; the random init it does must not move the global RNG of a run
    # (and torchvision's warning about lpips' old `pretrained=` argument is noise here)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        loss_fn = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    load_backbone(loss_fn, path, net)
    loss_fn.eval()
    for p in loss_fn.parameters():
        p.requires_grad_(False)
    return loss_fn


class LPIPSMetric(Metric):
    """Mean LPIPS distance between predictions and targets (images in [0, 1], NCHW); lower is closer.

    One-channel images are repeated to RGB; images are scaled to [-1, 1] for `lpips`.
    """

    name = "lpips"
    higher_is_better = False

    def __init__(self, net: str = "alex", weights: str | Path | None = None, download: bool = False):
        self.net = net
        self.loss_fn = build_lpips(net, weights, download)
        self.reset()

    def reset(self) -> None:
        self._sum = 0.0
        self._count = 0

    def distances(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS distances (N,) of two batches of images in [0, 1]."""
        if pred.shape != target.shape or pred.dim() != 4:
            raise ValueError(
                f"lpips takes two batches of images of one shape (N, C, H, W), got "
                f"{tuple(pred.shape)} and {tuple(target.shape)}"
            )
        if pred.shape[1] == 1:
            pred, target = pred.expand(-1, 3, -1, -1), target.expand(-1, 3, -1, -1)
        if pred.shape[1] != 3:
            raise ValueError(f"lpips takes RGB or one-channel images, got {pred.shape[1]} channels")
        if next(self.loss_fn.parameters()).device != pred.device:
            self.loss_fn = self.loss_fn.to(pred.device)
        try:
            with torch.no_grad():
                d = self.loss_fn(pred.float() * 2 - 1, target.float() * 2 - 1)
        except RuntimeError as exc:
            if "too small" not in str(exc):
                raise
            raise ValueError(
                f"lpips(net='{self.net}') cannot measure {pred.shape[-2]}x{pred.shape[-1]} images: "
                f"its backbone pools them away (alex needs at least 31x31 pixels). Resize the "
                f"data (e.g. `data: {{size: 32}}`) or drop lpips from `metrics:`"
            ) from None
        return d.reshape(-1)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        d = self.distances(pred.detach(), target.detach())
        self._sum += float(d.double().sum())
        self._count += int(d.numel())

    def compute(self) -> float:
        return self._sum / self._count if self._count else float("nan")
