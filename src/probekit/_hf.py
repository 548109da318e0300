"""Loading Hugging Face configs for model adapters (imports transformers only when called)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from probekit._errors import SpecError


def load_config(name: str, *, model_type: str, fix: str, trust_remote_code: bool = False,
                config_class: Any = None, overrides: dict[str, Any] | None = None) -> Any:
    """The config of `name` (a hub id or a local `save_pretrained` directory), checked to be `model_type`.

    Errors are SpecErrors on `model.name`: a directory without config.json, a config that cannot be
    loaded (`fix` says how to supply it offline), or a model of another type.
    """
    if config_class is None:
        from transformers import AutoConfig

        config_class = AutoConfig
    local = Path(name).expanduser()
    src = str(local) if local.is_dir() else name
    if local.is_dir() and not (local / "config.json").exists():
        raise SpecError(f"{local} has no config.json", path="model.name",
                        fix="Give a directory written by save_pretrained (config.json + model weights).")
    try:
        config = config_class.from_pretrained(src, trust_remote_code=trust_remote_code, **(overrides or {}))
    except OSError as exc:
        raise SpecError(f"cannot load the Hugging Face config of '{name}' ({type(exc).__name__})",
                        path="model.name", fix=fix) from None
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise SpecError(f"'{name}' comes with its own Python code, which probekit does not run unless the spec "
                        f"allows it", path="model.trust_remote_code",
                        fix="Read that code; if you trust it, set `trust_remote_code: true` under `model:`.") from None
    if config.model_type != model_type:
        raise SpecError(f"'{name}' is a '{config.model_type}' model, not '{model_type}'", path="model.name",
                        fix=f"Give a {model_type} checkpoint.")
    return config
