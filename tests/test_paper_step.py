"""One ``paper`` training step of a small network against the contract written out independently
(tests/reference.py): logits, BN gradients and the float stem's gradient match bit for bit; the
quantized weight update lies in the stochastic-rounding bracket; the rest of the update is exact."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import reference as ref
from wageubn import QSGD, WAGEUBNConfig, quantize_
from wageubn.models import create_model

EXACT = {"rtol": 0, "atol": 0}


def _setup(seed=0):
    torch.manual_seed(seed)
    model = create_model("small_cnn", width=4)
    quantize_(model, WAGEUBNConfig.preset("paper"))
    x = torch.randn(6, 1, 12, 12)
    y = torch.randint(0, 10, (6,))
    return model, x, y


def test_logits_and_gradients_match_reference():
    model, x, y = _setup()
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    logits = model(x)
    ref_logits = ref.ref_small_cnn_logits(x, params)
    torch.testing.assert_close(logits, ref_logits, **EXACT)
    F.cross_entropy(logits, y).backward()
    F.cross_entropy(ref_logits, y).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, params[name].grad, **EXACT, msg=name)


def test_update_matches_contract():
    model, x, y = _setup(1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = QSGD(model.parameters(), lr=0.05, momentum=0.25, weight_decay=1e-4, config="paper")
    F.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    lr_q = round(0.05 * 2**9) / 2**9  # QC(lr, 10)
    assert lr_q == 26 / 512
    for name, p in model.named_parameters():
        g = grads[name]
        if name.startswith(("stem", "fc")):
            # float parameters: torch.optim.SGD's arithmetic with lr_q; on the first step acc = g
            g = g.add(before[name], alpha=1e-4)
            expect = before[name].add(g, alpha=-lr_q)
            torch.testing.assert_close(p.detach(), expect, **EXACT, msg=name)
        elif name.startswith("bn"):
            G = ref.direct(g, 15).float()  # BN: no weight decay, Q(g, 15)
            acc = ref.direct(G, 13).float()
            expect = ref.direct(before[name] - lr_q * G, 24).float()
            torch.testing.assert_close(p.detach(), expect, **EXACT, msg=name)
            torch.testing.assert_close(opt.state[p]["momentum_buffer"], acc, **EXACT)
        else:  # quantized conv weight: CQ with dr = 128, stochastic → one of two neighbours
            g = g.add(before[name], alpha=1e-4)
            r = ref.r_exponent(ref._values(g))
            v = 128 * g.double() / 2.0**r
            lo = torch.floor(v).clamp(-127, 127)
            hi = (torch.floor(v) + 1).clamp(-127, 127)
            cands = [
                ref.direct((before[name].double() - lr_q * c * 2.0**-14).float(), 24).float()
                for c in (lo, hi)
            ]
            new = p.detach()
            assert bool(((new == cands[0]) | (new == cands[1])).all()), name
            # both neighbours occur, in proportions consistent with SR (not always rounding one way)
            frac = v - torch.floor(v)
            took_hi = (new == cands[1]) & (cands[0] != cands[1])
            mixed = (frac > 0.2) & (frac < 0.8) & (cands[0] != cands[1])
            if int(mixed.sum()) > 30:
                rate = took_hi[mixed].double().mean()
                expected = frac[mixed].mean()
                n = int(mixed.sum())
                assert abs(rate - expected) < 6 * 0.5 / math.sqrt(n), name
