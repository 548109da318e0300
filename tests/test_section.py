"""`probekit.Section`: nested `{type: ...}` blocks validated against the registry, with key paths."""

from __future__ import annotations

from typing import ClassVar

import pytest
from pydantic import ValidationError

from probekit import Options, Section, spec_error_from_validation


class ModelSection(Section):
    kind: ClassVar[str] = "models"


class Attach(Options):
    models: list[ModelSection]


def _error(data):
    with pytest.raises(ValidationError) as err:
        Attach.model_validate(data)
    return str(spec_error_from_validation(err.value, prefix="probe", model=Attach))


def test_valid_section_gives_the_owners_defaults_and_builds():
    ok = Attach.model_validate({"models": [{"type": "module", "factory": "probekit.testing:mlp",
                                            "input_shape": [1, 8, 8]}]})
    section = ok.models[0]
    assert section.options() == {"factory": "probekit.testing:mlp", "input_shape": [1, 8, 8]}
    assert section.validated_options()["kwargs"] == {}  # filled in by the module adapter's options model
    adapter = section.create()
    assert [layer.name for layer in adapter.layers()][:2] == ["0", "1"]


def test_unknown_type_names_the_key_and_suggests():
    message = _error({"models": [{"type": "modul"}]})
    assert "probe.models[0]" in message and "unknown model 'modul'" in message and "module" in message


def test_bad_option_of_the_type_names_the_key():
    message = _error({"models": [{"type": "module", "factory": "probekit.testing:mlp", "widht": 3}]})
    assert "probe.models[0]" in message and "widht" in message
