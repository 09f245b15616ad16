"""A tensor learning rate gives the same bits as the Python float it holds (CPU)."""

import pytest
import torch

import matfun.optim as mo


def _run(cls, lr, dtype, **kw):
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(32, 16, generator=g, dtype=dtype))
    opt = cls([p], lr=lr, **kw)
    for _ in range(3):
        p.grad = torch.randn(32, 16, generator=g, dtype=dtype)
        opt.step()
    return p.detach().clone(), opt


@pytest.mark.parametrize("cls", [mo.Muon, mo.HiMuon, mo.Muon2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lr_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("adjust", [None, "match_rms_adamw"])
def test_tensor_lr_is_bit_identical_to_its_float(cls, dtype, lr_dtype, adjust):
    for value in (0.02, 0.03, 0.007):
        lr = torch.tensor(value, dtype=lr_dtype)
        a, _ = _run(cls, float(lr), dtype, adjust_lr_fn=adjust)
        b, opt = _run(cls, lr, dtype, adjust_lr_fn=adjust)
        assert torch.equal(a, b), (value, (a - b).abs().max())
        assert isinstance(opt.param_groups[0]["lr"], torch.Tensor)  # the group keeps the user's tensor
