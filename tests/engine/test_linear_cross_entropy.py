"""The chunked output layer + cross-entropy of the clm objective equals the plain path."""

import pytest
import torch
import torch.nn.functional as F

from workers.engine.objectives import clm


@pytest.mark.parametrize("rows", [7, 3 * 4 + 1])
def test_chunked_loss_and_gradients_equal_the_plain_path(monkeypatch, rows):
    monkeypatch.setattr(clm, "LOGIT_CHUNK_ROWS", 4)  # several chunks, a ragged last one
    torch.manual_seed(0)
    hidden = torch.randn(rows, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (rows,))

    plain = F.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    expected = torch.autograd.grad(plain * 0.5, (hidden, weight))
    chunked = clm.linear_cross_entropy(hidden, weight, targets)
    got = torch.autograd.grad(chunked * 0.5, (hidden, weight))

    assert chunked.dtype == plain.dtype
    assert torch.allclose(chunked, plain, rtol=1e-12)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype
        assert torch.allclose(g, e, rtol=1e-10, atol=1e-12)

