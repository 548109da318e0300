"""Names of the attribution methods (no heavy imports: used by the options models)."""

from __future__ import annotations

METHODS = ("integrated-gradients", "saliency", "gradient-x-input", "occlusion", "grad-cam")
_ALIASES = {
    "ig": "integrated-gradients",
    "integrated_gradients": "integrated-gradients",
    "input-x-gradient": "gradient-x-input",
    "input_x_gradient": "gradient-x-input",
    "gradient_x_input": "gradient-x-input",
    "gradcam": "grad-cam",
    "grad_cam": "grad-cam",
    "layer-grad-cam": "grad-cam",
}


def method_name(name: str) -> str:
    """The canonical name of an attribution method (accepts `_` for `-` and a few aliases)."""
    key = _ALIASES.get(name, name.replace("_", "-"))
    if key not in METHODS:
        raise ValueError(f"unknown attribution method '{name}'; use one of {', '.join(METHODS)}")
    return key
