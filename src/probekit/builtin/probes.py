"""Built-in probe `linear`: a linear classifier per layer on frozen features."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from probekit._spec import BATCH_SIZE_HELP, BatchSize, Options
from probekit.hookspecs import hookimpl


class LinearProbeOptions(Options):
    layers: list[str] | Literal["all"] = Field(..., description="Layer names to probe, or 'all'.")
    solver: Literal["lbfgs", "sgd"] = Field(
        "lbfgs", description="lbfgs: multinomial logistic regression solved to convergence by full-batch L-BFGS "
                             "(the default); sgd: the fallback for feature sets too large for full-batch passes, "
                             "Adam for a fixed number of epochs (epochs, lr, batch_size, weight_decay), not "
                             "converged.")
    C: float | Literal["auto"] = Field(
        "auto", description="Inverse L2 strength as in scikit-learn (objective: mean cross-entropy + "
                            "||W||^2 / (2 C n)); auto = the value of c_grid with the best accuracy on a validation "
                            "split of the training rows, then refit on all of them.")
    c_grid: list[Annotated[float, Field(gt=0)]] = Field(
        [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0], min_length=1, description="The values of C tried by C: auto.")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the training rows held out to choose C.")
    tol: float = Field(1e-6, gt=0, description="Convergence: the largest absolute entry of the gradient of the "
                                               "(mean) objective is at most tol (scikit-learn's tol).")
    max_iter: int = Field(1000, ge=1, description="Most L-BFGS iterations per fit; a fit that stops there is "
                                                  "reported as not converged (log, report, results.csv).")
    stream_above_mb: float = Field(2048, gt=0, description="Feature sets larger than this (MiB as float64) "
                                                           "are streamed from the feature cache at every "
                                                           "L-BFGS evaluation instead of loaded.")
    chunk_rows: int = Field(8192, ge=1, description="Rows per chunk of the full-batch loss and gradient.")
    epochs: int = Field(30, ge=1, description="solver sgd: training epochs of each linear classifier.")
    lr: float = Field(1e-2, gt=0, description="solver sgd: Adam learning rate.")
    batch_size: BatchSize = Field(256, description="solver sgd: " + BATCH_SIZE_HELP)
    weight_decay: float = Field(1e-4, ge=0, description="solver sgd: Adam weight decay.")
    pool: Literal["auto", "flatten", "mean", "cls"] = Field(
        "auto", description="How states become vectors: flatten; mean over tokens / spatial positions; the "
                            "first (class) token; auto = flatten up to max_features, else pool.")
    max_features: int = Field(8192, ge=1, description="Largest flattened size for pool=auto.")


@hookimpl
def probekit_register_probes(register: Any) -> None:
    register("linear", "probekit.builtin._linear:LinearProbe", options=LinearProbeOptions,
             description="Multinomial logistic regression per layer on frozen, standardised features "
                         "(L-BFGS to convergence, C chosen on a validation split); accuracy vs depth.",
             computes=["accuracy"], accepts_metrics=["accuracy"])
