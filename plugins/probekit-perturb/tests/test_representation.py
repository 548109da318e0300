"""Linear CKA, cosine, flip rate and logit distance against their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from probekit_perturb.representation import linear_cka

import probekit


def _reference_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019), eq. for linear CKA, through centred Gram matrices (HSIC form)."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float(np.sum(k * l_) / (np.linalg.norm(k) * np.linalg.norm(l_)))


def _data(n: int = 50, d: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_cka_of_a_representation_with_itself_is_one():
    for d in (5, 200):  # feature-space and Gram-matrix paths
        x = _data(40, d)
        assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    x = _data(60, 16)
    q, _ = torch.linalg.qr(_data(16, 16, seed=1))
    assert torch.allclose(q.T @ q, torch.eye(16, dtype=torch.float64), atol=1e-12)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=1e-12)
    y = _data(60, 10, seed=2)
    base = linear_cka(x, y)
    assert linear_cka(x @ q * 0.1, y * 3.0) == pytest.approx(base, abs=1e-10)
    # but not to a general (non-orthogonal) linear map
    a = torch.diag(torch.linspace(0.1, 5.0, 16, dtype=torch.float64))
    assert linear_cka(x, x @ a) < 0.99


def test_cka_matches_the_gram_matrix_reference_on_both_paths():
    x, y = _data(30, 8), _data(30, 12, seed=3)
    assert linear_cka(x, y) == pytest.approx(_reference_cka(x.numpy(), y.numpy()), abs=1e-12)
    x, y = _data(30, 80), _data(30, 50, seed=4)
    assert linear_cka(x, y) == pytest.approx(_reference_cka(x.numpy(), y.numpy()), abs=1e-12)
    assert 0.0 <= linear_cka(x, y) < 1.0


def test_streaming_cka_metric_equals_the_whole_set_and_flattens_states():
    x = torch.randn(64, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    y = x + 0.5 * torch.randn(64, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    m = probekit.create_metric("cka", dtype="float64")
    for i in range(0, 64, 20):
        m.update(y[i : i + 20], x[i : i + 20])
    assert m.compute() == pytest.approx(linear_cka(x.flatten(1), y.flatten(1)), abs=1e-12)


def test_cosine_flip_rate_and_logit_distance():
    clean = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    pert = torch.tensor([[2.0, 0.0], [2.0, 0.0], [1.0, 3.0]])
    cos = probekit.create_metric("cosine")
    cos.update(pert, clean)
    expected = (1.0 + 0.0 + (3 + 3) / (10**0.5 * 10**0.5)) / 3
    assert cos.compute() == pytest.approx(expected)
    flips = probekit.create_metric("flip_rate")
    flips.update(pert[:2], clean[:2])
    flips.update(pert[2:], clean[2:])
    assert flips.compute() == pytest.approx(2 / 3)
    dist = probekit.create_metric("logit_distance")
    dist.update(pert, clean)
    assert dist.compute() == pytest.approx((1.0 + 8**0.5 + 8**0.5) / 3)
    rel = probekit.create_metric("logit_distance", relative=True)
    rel.update(pert, clean)
    assert rel.compute() == pytest.approx((1.0 + 8**0.5 / 2 + 8**0.5 / 10**0.5) / 3)
