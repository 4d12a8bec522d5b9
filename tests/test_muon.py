"""anyflow.muon: batched fp32 Newton-Schulz Muon against torch.optim.Muon, and the Muon + AdamW composite."""

import pytest
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from tinymodels import tiny_wan

from anyflow.muon import Muon, MuonAdamW, hidden_matrices, newton_schulz

NS = (3.4445, -4.7750, 2.0315)   # torch.optim.Muon's quintic coefficients


def test_newton_schulz_orthogonalises_each_matrix_of_a_stack_alike():
    g = torch.Generator().manual_seed(0)
    # singular values spread 300x: five NS steps bring all of them near 1 (Muon's S' ~ U(0.5, 1.5))
    U, _, V = torch.linalg.svd(torch.randn(3, 24, 40, generator=g), full_matrices=False)
    G = U @ torch.diag_embed(torch.logspace(-1.5, 1, 24).expand(3, -1)) @ V
    X = newton_schulz(G, NS, 5, 1e-7)
    s = torch.linalg.svdvals(X)
    assert s.min() > 0.5 and s.max() < 1.5
    for i in range(3):                                   # batched = one matrix at a time, tall = wide transposed
        torch.testing.assert_close(X[i], newton_schulz(G[i], NS, 5, 1e-7), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(X[i].T, newton_schulz(G[i].T, NS, 5, 1e-7), atol=1e-5, rtol=1e-5)
    # same direction of update as the SVD's orthogonal factor U Vᵀ
    polar = U @ V
    cos = torch.nn.functional.cosine_similarity(X.flatten(1), polar.flatten(1), dim=1)
    assert cos.min() > 0.9


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_matches_torch_muon_up_to_its_bf16_rounding(nesterov):
    torch.manual_seed(0)
    shapes = [(64, 32), (32, 64), (64, 32), (48, 48)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    start = [p.detach().clone() for p in ours]
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov)
    a, b = Muon(ours, **kw), torch.optim.Muon(ref, **kw)
    for _ in range(4):
        for p, q in zip(ours, ref):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q, w in zip(ours, ref, start):
        moved = (q - w).norm()
        assert moved > 0.01
        assert (p - q).norm() / moved < 0.02              # torch's NS runs in bf16; ours in fp32
    assert a.state_dict()["state"][0]["momentum_buffer"].shape == (64, 32)


def test_hidden_matrices_are_the_blocks_linear_weights():
    model = tiny_wan()
    hidden = hidden_matrices(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert hidden and all(p.ndim == 2 for p in hidden)
    assert all(names[id(p)].startswith("blocks.") and names[id(p)].endswith(".weight") for p in hidden)
    assert not any("scale_shift" in names[id(p)] or "norm" in names[id(p)] for p in hidden)
    assert len(hidden) == 10 * len(model.blocks)         # q, k, v, out of both attentions, and the FFN's two


def test_muon_adamw_schedules_both_and_round_trips_its_state():
    model = tiny_wan()
    opt = MuonAdamW(model.parameters(), hidden_matrices(model), lr=1e-3, muon_lr=0.02)
    sched = get_cosine_schedule_with_warmup(opt, 2, 10)
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(3):
        model.zero_grad()
        sum(p.square().sum() for p in model.parameters()).backward()
        opt.step()
        sched.step()
    muon_lr, adamw_lr = (g["lr"] for g in opt.param_groups)
    assert muon_lr / 0.02 == pytest.approx(adamw_lr / 1e-3) and 0 < adamw_lr < 1e-3
    hidden = {id(p) for p in hidden_matrices(model)}
    moved = {id(p) in hidden for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {True, False}                        # both optimisers moved their parameters
    state = opt.state_dict()
    again = MuonAdamW(model.parameters(), hidden_matrices(model), lr=1e-3, muon_lr=0.02)
    again.load_state_dict(state)
    torch.testing.assert_close(again.state_dict()["muon"]["state"], state["muon"]["state"])
    with pytest.raises(ValueError, match="hidden matrix"):
        MuonAdamW(list(model.parameters())[:3], hidden_matrices(model), lr=1e-3, muon_lr=0.02)
