"""`create_*` functions: build registered types by name, validating their options."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from probekit._errors import SpecError
from probekit._plugins import get_plugin_manager
from probekit._spec import spec_error_from_validation


def build(kind: str, name: str, options: dict[str, Any], **extra: Any) -> Any:
    entry = get_plugin_manager().get(kind, name, path=kind[:-1])
    model = entry.options_model()
    if model is not None:
        try:
            options = model.model_validate(options).model_dump()
        except ValidationError as exc:
            raise spec_error_from_validation(exc, prefix=f"{kind[:-1]} '{name}'", model=model) from None
    return entry.load()(**extra, **options)


def create_model(type: str, **options: Any) -> Any:
    """A model adapter of a registered type, e.g. `create_model("module", factory="torchvision.models:resnet18")`."""
    return build("models", type, options)


def create_probe(type: str, **options: Any) -> Any:
    """A probe of a registered type, e.g. `create_probe("linear", layers=["1", "3"])`."""
    return build("probes", type, options)


def create_metric(type: str, **options: Any) -> Any:
    """A metric of a registered type, e.g. `create_metric("psnr")`."""
    return build("metrics", type, options)


def create_dataset(type: str, *, seed: int = 0, **options: Any) -> Any:
    """A `DataBundle` from a registered source, e.g. `create_dataset("digits")`."""
    return build("datasets", type, options, seed=seed)


def create_perturbation(type: str, **options: Any) -> Any:
    """A perturbation callable `perturb(images, mask=None, generator=None)` by name."""
    try:
        return build("perturbations", type, options)
    except SpecError as exc:
        if not get_plugin_manager().names("perturbations"):
            raise SpecError(f"no perturbations are installed (asked for '{type}')", path=exc.path,
                            fix="They are provided by probekit-perturb: pip install probekit-perturb") from None
        raise
