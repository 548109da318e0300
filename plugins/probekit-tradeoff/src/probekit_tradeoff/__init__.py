"""probekit plugin `tradeoff`: how much classification- and reconstruction-driven information
can share one latent layer.

This module only registers the probe and its options; it imports neither torch nor any model
library, so that `probekit plugins` stays fast. The implementation lives in private modules that
the registry imports when a spec uses the probe.
"""

from __future__ import annotations

from typing import Any

import probekit_core.required  # noqa: F401  (first: stops with a clear message if `probekit` is not ours)
from probekit import hookimpl
from probekit_tradeoff.options import FAMILIES, EncoderOptions, TradeoffOptions

__version__ = "0.1.0"  # the one place of the version (pyproject.toml reads it)
__all__ = ["FAMILIES", "EncoderOptions", "TradeoffOptions", "probekit_register_probes"]


@hookimpl
def probekit_register_probes(register: Any) -> None:
    register(
        "tradeoff",
        "probekit_tradeoff._probe:TradeoffProbe",
        options=TradeoffOptions,
        description="Classification vs reconstruction through one shared latent: sweeps of lambda, "
        "latent size and model family, with PCA and random-projection baselines.",
        needs_model=False,
        computes=["accuracy", "mse", "cross_entropy", "readout_accuracy"],
        accepts_metrics=[],
    )
