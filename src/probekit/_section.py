"""`Section`: a nested `{type: ..., <options>}` block of a spec, validated against the registry.

The spec's own `model:`, `data:` and `probe:` sections are validated by the core; a plugin whose
options hold such a block of their own (a list of perturbations, another model to attach)
declares the field with a `Section` subclass and gets the same validation: the `type` must be
registered (with a did-you-mean and the plugin to install), and the other keys are checked by
the options model of the plugin that owns the type, with the key path in the error.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Section(BaseModel):
    """A `{type: <registered name>, <its options>...}` block; subclass it with `kind = "models"` etc.

    Attributes:
        kind: the registry the type is looked up in (`models`, `perturbations`, `metrics`, ...).
        reserved: keys of the block that belong to the subclass itself, not to the type's options.
    """

    model_config = ConfigDict(extra="allow")
    kind: ClassVar[str] = ""
    reserved: ClassVar[frozenset[str]] = frozenset()

    type: str = Field(..., description="A registered name (`probekit list` shows them).")

    @model_validator(mode="after")
    def _validate_type_options(self) -> Section:
        from probekit._errors import SpecError
        from probekit._plugins import get_plugin_manager
        from probekit._spec import spec_error_from_validation

        try:
            entry = get_plugin_manager().get(self.kind, self.type)
        except SpecError as exc:  # a ValueError here gets the key path from pydantic
            raise ValueError(exc.message + (f" {exc.fix}" if exc.fix else "")) from None
        model = entry.options_model()
        if model is not None:
            try:
                validated = model.model_validate(self.options())
            except ValidationError as exc:
                raise ValueError(str(spec_error_from_validation(exc, model=model))) from None
            object.__setattr__(self, "_validated", validated.model_dump())
        return self

    def options(self) -> dict[str, Any]:
        """The type's options as written (every key but `type` and the reserved ones)."""
        return {k: v for k, v in (self.model_extra or {}).items() if k not in self.reserved}

    def validated_options(self) -> dict[str, Any]:
        """The type's options after its options model (defaults filled in)."""
        return dict(getattr(self, "_validated", None) or self.options())

    def create(self, **extra: Any) -> Any:
        """Build the registered object with the validated options (and `extra`)."""
        from probekit._registry import build

        return build(self.kind, self.type, {**self.validated_options(), **extra})
