"""Built-in probe `linear`: a linear classifier per layer on frozen features."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from probekit._spec import BATCH_SIZE_HELP, BatchSize, Options
from probekit.hookspecs import hookimpl


class LinearProbeOptions(Options):
    layers: list[str] | Literal["all"] = Field(..., description="Layer names to probe, or 'all'.")
    epochs: int = Field(30, ge=1, description="Training epochs of each linear classifier.")
    lr: float = Field(1e-2, gt=0)
    batch_size: BatchSize = Field(256, description=BATCH_SIZE_HELP)
    weight_decay: float = Field(1e-4, ge=0)
    pool: Literal["auto", "flatten", "mean", "cls"] = Field(
        "auto", description="How states become vectors: flatten; mean over tokens / spatial positions; the "
                            "first (class) token; auto = flatten up to max_features, else pool.")
    max_features: int = Field(8192, ge=1, description="Largest flattened size for pool=auto.")


@hookimpl
def probekit_register_probes(register: Any) -> None:
    register("linear", "probekit.builtin._linear:LinearProbe", options=LinearProbeOptions,
             description="Linear classifier per layer on frozen features; accuracy vs depth.")
