"""Built-in model type `module`: any PyTorch model given as an import path."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from probekit._spec import ExistingPath, Options
from probekit.hookspecs import hookimpl


class ModuleOptions(Options):
    factory: str = Field(..., pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
                         description='Import path of a callable returning an nn.Module, "package.module:callable".')
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the factory.")
    weights: ExistingPath | None = Field(None, description="A state dict (.safetensors, or a torch file "
                                                           "loaded with weights_only=True).")
    layers: list[str] | None = Field(None, description="Module paths to expose as layers (default: all).")
    input_shape: tuple[int, int, int] | None = Field(None, description="(C, H, W); default: the data's shape.")
    mean: list[float] = Field([0.0], description="Per-channel mean subtracted by preprocess.")
    std: list[float] = Field([1.0], description="Per-channel std divided by preprocess.")


@hookimpl
def probekit_register_models(register: Any) -> None:
    register("module", "probekit.builtin._module:ModuleAdapter", options=ModuleOptions,
             description="Any PyTorch nn.Module from an import path; layers are its module paths.")
