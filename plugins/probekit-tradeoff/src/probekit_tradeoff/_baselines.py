"""Linear baselines at the same latent size: PCA and a Gaussian random projection.

For each, the latent code of an image is a linear function of its pixels (in [-1, 1], flattened);
the reported reconstruction is the best linear (affine) reconstruction of the pixels from the code,
fitted on the training set, and the accuracy is that of a multinomial logistic regression on the
standardised codes.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch


def pca_codes(
    train: torch.Tensor, test: torch.Tensor, latent: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PCA codes of train and test (N, L) and reconstructions (N, D) from the top `latent` components.

    The reconstruction `mean + (x - mean) V V^T` is the best linear one from PCA codes.
    """
    x = train.double()
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / max(len(x) - 1, 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    k = min(latent, x.shape[1])
    v = vecs[:, -k:].flip(1)
    codes = [((a.double() - mean) @ v) for a in (train, test)]
    recons = [c @ v.T + mean for c in codes]
    return codes[0].float(), codes[1].float(), recons[0].float(), recons[1].float()


def random_codes(
    train: torch.Tensor, test: torch.Tensor, latent: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes `x R` for a Gaussian `R` (D, L) with unit columns (as in the study), and the least-squares
    affine reconstructions of the pixels from them."""
    r = torch.randn(train.shape[1], latent, generator=generator, dtype=torch.float64)
    r /= r.norm(dim=0, keepdim=True)
    codes = [a.double() @ r for a in (train, test)]
    design = torch.cat([codes[0], torch.ones(len(codes[0]), 1, dtype=torch.float64)], dim=1)
    w = torch.linalg.lstsq(design, train.double(), driver="gelsd").solution
    recons = [torch.cat([c, torch.ones(len(c), 1, dtype=torch.float64)], 1) @ w for c in codes]
    return codes[0].float(), codes[1].float(), recons[0].float(), recons[1].float()


def logistic_regression(
    train_codes: torch.Tensor,
    train_labels: torch.Tensor,
    test_codes: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    max_iter: int,
) -> tuple[float, float]:
    """Test accuracy and cross-entropy of a multinomial logistic regression on standardised codes."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    xtr, xte = train_codes.double().numpy(), test_codes.double().numpy()
    mean, std = xtr.mean(0), xtr.std(0)
    std[std < 1e-12] = 1.0
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    clf = LogisticRegression(max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a capped iteration count is a choice here
        clf.fit(xtr, train_labels.numpy())
    proba = np.zeros((len(xte), num_classes))
    proba[:, clf.classes_] = clf.predict_proba(xte)
    ytest = test_labels.numpy()
    accuracy = float((proba.argmax(1) == ytest).mean())
    ce = float(log_loss(ytest, np.clip(proba, 1e-15, 1.0), labels=list(range(num_classes))))
    return accuracy, ce


def baseline(
    kind: str,
    latent: int,
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    *,
    seed: int,
    max_iter: int,
) -> dict[str, Any]:
    """One baseline row: `test_mse` (pixels in [-1, 1]), `test_ce` and `accuracy`.

    `train` / `test` are flattened pixels in [-1, 1], (N, D).
    """
    if kind == "pca":
        ctr, cte, _, rte = pca_codes(train, test, latent)
    elif kind == "random":
        g = torch.Generator().manual_seed(seed)
        ctr, cte, _, rte = random_codes(train, test, latent, g)
    else:
        raise ValueError(f"unknown baseline '{kind}'")
    mse = float(((rte - test) ** 2).mean())
    accuracy, ce = logistic_regression(ctr, train_labels, cte, test_labels, num_classes, max_iter)
    return {
        "family": kind,
        "latent": latent,
        "lambda": None,
        "test_mse": mse,
        "test_ce": ce,
        "accuracy": accuracy,
        "components": int(ctr.shape[1]),
    }
