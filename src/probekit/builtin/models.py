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
                                                           "loaded with weights_only=True). With torchvision "
                                                           "weights named in kwargs, loaded in their place "
                                                           "(nothing downloaded).")
    weights_strict: bool = Field(True, description="Require the state dict to cover every parameter; false "
                                                   "loads a file that covers part of the model (the rest keeps "
                                                   "its initial weights). A file that fits nothing is refused.")
    weights_prefix: str = Field("", description="Prefix added to every key of the state dict (e.g. 'features.' "
                                                "for a file saved from a submodule).")
    layers: list[str] | None = Field(None, description="Module paths to expose as layers (default: all).")
    input_shape: tuple[int, int, int] | None = Field(None, description="(C, H, W); default: the named "
                                                                      "torchvision weights' crop size, else the "
                                                                      "data's shape.")
    mean: list[float] | None = Field(None, description="Per-channel mean subtracted by preprocess (default: "
                                                       "the named torchvision weights' mean, else 0).")
    std: list[float] | None = Field(None, description="Per-channel std divided by preprocess (default: the "
                                                      "named torchvision weights' std, else 1).")


@hookimpl
def probekit_register_models(register: Any) -> None:
    register("module", "probekit.builtin._module:ModuleAdapter", options=ModuleOptions, import_options=("factory",),
             description="Any PyTorch nn.Module from an import path (torchvision models by name); "
                         "layers are its module paths.")
