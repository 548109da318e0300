"""probekit-inversion: the `inversion` probe (modular inverse networks and their analyses).

This module only registers the probe; torch and the implementation are imported
when a spec uses it, so `probekit plugins` stays fast.
"""

from __future__ import annotations

from typing import Any

import probekit_core.required  # noqa: F401  (first: stops with a clear message if `probekit` is not ours)
from probekit import hookimpl

__version__ = "0.1.0"  # the one place of the version (pyproject.toml reads it)


@hookimpl
def probekit_register_probes(register: Any) -> None:
    register(
        "inversion",
        "probekit_inversion.probe:InversionProbe",
        options="probekit_inversion.options:InversionOptions",
        description="Inverse networks reconstructing the input from each layer (modular or end-to-end); "
        "reconstruction error vs depth, layer correlation, colour robustness.",
        computes=["mse", "psnr", "ssim", "lpips"],  # the default image metrics (lpips when installed)
        accepts_metrics=["image"],
    )
