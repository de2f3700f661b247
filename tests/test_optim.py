"""QSGD: the update of §3 in its exact order, fp32 ≡ torch SGD, checkpointing, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wageubn import QSGD, WAGEUBNConfig, quantize_
from wageubn.models import create_model
from wageubn.optim import param_groups, parameter_roles

EXACT = {"rtol": 0, "atol": 0}


def _data(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 12, 12, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_fp32_preset_equals_torch_sgd_three_steps():
    torch.manual_seed(0)
    ref = create_model("small_cnn", width=4)
    model = quantize_(copy.deepcopy(ref), "fp32")
    bn = [p for n, p in ref.named_parameters() if n.startswith("bn")]
    other = [p for n, p in ref.named_parameters() if not n.startswith("bn")]
    sgd = torch.optim.SGD(
        [{"params": other}, {"params": bn, "weight_decay": 0.0}],
        lr=0.07, momentum=0.25, weight_decay=1e-4,
    )  # fmt: skip
    qsgd = QSGD(model.parameters(), lr=0.07, momentum=0.25, weight_decay=1e-4, config="fp32")
    for step in range(3):
        x, y = _data(step)
        for m, opt in ((ref, sgd), (model, qsgd)):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
    for (n, p), (_, q) in zip(ref.named_parameters(), model.named_parameters(), strict=True):
        torch.testing.assert_close(q, p, **EXACT, msg=n)
    for (n, b), (_, c) in zip(ref.named_buffers(), model.named_buffers(), strict=True):
        torch.testing.assert_close(c, b, **EXACT, msg=n)


def test_closure_is_honoured():
    torch.manual_seed(0)
    ref = create_model("small_cnn", width=4)
    model = quantize_(copy.deepcopy(ref), "fp32")
    x, y = _data()
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.25)
    qsgd = QSGD(model.parameters(), lr=0.1, momentum=0.25, weight_decay=0, config="fp32")
    for m, opt in ((ref, sgd), (model, qsgd)):

        def closure(m=m, opt=opt):
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            return loss

        loss = opt.step(closure)
        assert loss is not None and loss.requires_grad
    for p, q in zip(ref.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(q, p, **EXACT)


def test_update_order_by_hand():
    """acc = m·acc + G; p = p − lr_q·acc; acc = Q(acc, 13); p = Q(p, 24) — worked out by hand."""
    cfg = WAGEUBNConfig.preset("paper").replace(grad_rounding="nearest", grad_range=8)
    p = nn.Parameter(torch.tensor([0.5, -0.25, 0.125, 0.0]))
    opt = QSGD(
        [{"params": [p], "role": "weight"}], lr=0.3, momentum=0.25, weight_decay=0.0, config=cfg
    )
    lr_q = 154 / 512  # QC(0.3, 10) = round(0.3·512)/512
    p.grad = torch.tensor([1.0, -0.5, 0.3, 0.0])  # R = 1; v = 8g = [8, −4, 2.4, 0] → clip ±7
    opt.step()
    G1 = torch.tensor([7.0, -4.0, 2.0, 0.0]) * 2.0**-14
    expect = torch.round((torch.tensor([0.5, -0.25, 0.125, 0.0]) - lr_q * G1) * 2**23) / 2**23
    torch.testing.assert_close(p.detach(), expect, **EXACT)
    # Q(acc, 13) after the update: 7·2^-14 = 1.75·2^-12 is stored as 2·2^-12
    acc1 = torch.round(G1 * 2**12) / 2**12
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], acc1, **EXACT)
    assert not torch.equal(acc1, G1)  # so the update above really used the unrounded acc
    p.grad = torch.tensor([0.0, 0.0, 0.0, 1.0])
    opt.step()
    acc2 = 0.25 * acc1 + torch.tensor([0.0, 0.0, 0.0, 7.0]) * 2.0**-14
    expect2 = torch.round((expect - lr_q * acc2) * 2**23) / 2**23
    torch.testing.assert_close(p.detach(), expect2, **EXACT)
    torch.testing.assert_close(
        opt.state[p]["momentum_buffer"], torch.round(acc2 * 2**12) / 2**12, **EXACT
    )


def _paper_run(steps, opt_state=None, model_state=None, seed=0):
    torch.manual_seed(0)
    model = quantize_(create_model("small_cnn", width=4), "paper")
    opt = QSGD(
        model.parameters(), lr=0.05, config="paper", generator=torch.Generator().manual_seed(seed)
    )
    if model_state is not None:
        model.load_state_dict(model_state)
        opt.load_state_dict(opt_state)
    for s in steps:
        x, y = _data(s)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt


def test_state_dict_round_trip_resumes_bit_identically():
    full, _ = _paper_run(range(4))
    half, opt = _paper_run(range(2))
    sd_model = copy.deepcopy(half.state_dict())
    sd_opt = copy.deepcopy(opt.state_dict())
    assert "generator_state" in sd_opt
    resumed, _ = _paper_run(range(2, 4), sd_opt, sd_model, seed=123)  # seed overwritten by state
    for (n, p), (_, q) in zip(full.named_parameters(), resumed.named_parameters(), strict=True):
        torch.testing.assert_close(q, p, **EXACT, msg=n)


def test_stored_tensors_on_their_grids_after_steps():
    model, opt = _paper_run(range(3))
    roles = parameter_roles(model)
    for name, p in model.named_parameters():
        if roles[name] == "float":
            continue
        w = p.detach().double() * 2**23
        assert torch.equal(w, torch.round(w)), name
        acc = opt.state[p]["momentum_buffer"].double() * 2**12
        assert torch.equal(acc, torch.round(acc)), name


def test_grad_range_is_schedulable():
    p = nn.Parameter(torch.zeros(1000))
    opt = QSGD(
        [{"params": [p], "role": "weight"}], lr=1.0, momentum=0.0, weight_decay=0.0, config="paper"
    )
    opt.param_groups[0]["grad_range"] = 2
    p.grad = torch.randn(1000)
    opt.step()
    codes = (p.detach().double() * 2**14).abs()
    assert codes.max() <= 1  # dr = 2: codes in {−1, 0, 1}
    with pytest.raises(ValueError, match="dr"):
        opt.param_groups[0]["grad_range"] = 1
        opt.step()


def test_lr_quantizing_to_zero_is_an_error():
    """A base lr that quantizes to 0 is refused at construction; momentum above 1 too."""
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"lr=0\.0005 quantizes to 0 with 10 lr bits"):
        QSGD([p], lr=0.0005, config="paper")
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\], got 1.5"):
        QSGD([p], lr=0.05, momentum=1.5, config="paper")
    QSGD([p], lr=0.0005, config="fp32")  # float lr: fine


def test_scheduled_lr_quantizing_to_zero_warns_once_and_updates_nothing():
    """A schedule that decays the lr to a value QC(lr, 10) rounds to 0 must finish the run (as
    torch.optim.lr_scheduler users expect): one RuntimeWarning, parameters left unchanged."""
    p = nn.Parameter(torch.full((2,), 0.5))
    opt = QSGD([{"params": [p], "role": "weight"}], lr=0.05, config="paper")
    opt.param_groups[0]["lr"] = 1e-4
    p.grad = torch.ones(2)
    with pytest.warns(RuntimeWarning, match=r"scheduled lr 0\.0001 quantizes to 0"):
        opt.step()
    assert torch.equal(p.detach(), torch.full((2,), 0.5))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once
        opt.step()


def test_cosine_schedule_to_zero_finishes():
    """CosineAnnealingLR(T_max=100) ends at lr 0: every one of the 100 steps runs."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4))
    opt = QSGD([{"params": [w], "role": "weight"}], lr=0.25, config="paper",
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    with pytest.warns(RuntimeWarning, match="quantizes to 0"):
        for _ in range(100):
            w.grad = torch.randn(4)
            opt.step()
            sched.step()
    assert bool(torch.isfinite(w).all())


def test_nan_gradient_names_the_parameter():
    p = nn.Parameter(torch.zeros(3))
    opt = QSGD([{"params": [p], "role": "weight"}], lr=0.05, config="paper")
    p.grad = torch.tensor([1.0, float("nan"), 0.0])
    with pytest.raises(
        ValueError, match=r"parameter 0 of group 0 \(shape \(3,\), role 'weight'\).*NaN"
    ):
        opt.step()


def test_bad_arguments():
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(TypeError, match="lr must be a number"):
        QSGD([p], lr="0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="momentum must be >= 0"):
        QSGD([p], lr=0.1, momentum=-1)
    with pytest.raises(ValueError, match="role must be one of"):
        QSGD([{"params": [p], "role": "bias"}], lr=0.1)
    with pytest.raises(TypeError, match="generator"):
        QSGD([p], lr=0.1, generator=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="did you mean"):
        QSGD([p], lr=0.1, config="fp23")


def test_roles_survive_deepcopy_and_pickle():
    """Roles are declared by the layers, so a copy has them without re-tagging: read off the
    model (parameter_roles) and found by QSGD from the copy's bare parameters."""
    import io
    import pickle

    model = quantize_(create_model("small_cnn", width=4), "paper")
    for clone in (copy.deepcopy(model), pickle.load(io.BytesIO(pickle.dumps(model)))):
        roles = parameter_roles(clone)
        assert roles["conv1.weight"] == "weight" and roles["bn2.bias"] == "bn"
        assert roles["stem.weight"] == "float"
        opt = QSGD(clone.parameters(), lr=0.05)
        group = opt.param_groups[0]
        assert opt.role_of(clone.conv1.weight, group) == "weight"
        assert opt.role_of(clone.bn2.bias, group) == "bn"
        assert opt.role_of(clone.stem.weight, group) == "float"


def test_quantizing_optimizer_without_quantized_parameters_is_an_error():
    model = create_model("small_cnn", width=4)  # forgot quantize_
    opt = QSGD(model.parameters(), lr=0.05, config="paper")
    x, y = _data()
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(ValueError, match="found no quantized parameter.*quantize_"):
        opt.step()


def test_from_model_groups_by_role_and_equals_qsgd_of_parameters():
    """QSGD.from_model: one explicit group per role, the model's config, and the same three
    steps as QSGD(model.parameters()) bit for bit (roles looked up from the layers)."""
    torch.manual_seed(0)
    base = quantize_(create_model("small_cnn", width=4), "paper")
    groups = param_groups(base)
    assert [g["role"] for g in groups] == ["weight", "bn", "float"]
    roles = parameter_roles(base)
    names = {id(p): n for n, p in base.named_parameters()}
    for g in groups:
        assert {roles[names[id(p)]] for p in g["params"]} == {g["role"]}
    assert sum(len(g["params"]) for g in groups) == len(roles)
    runs = []
    for build in (lambda m, gen: QSGD(m.parameters(), lr=0.05, generator=gen),
                  lambda m, gen: QSGD.from_model(m, lr=0.05, generator=gen)):  # fmt: skip
        model = copy.deepcopy(base)
        opt = build(model, torch.Generator().manual_seed(1))
        assert opt.config == WAGEUBNConfig.preset("paper")
        for s in range(3):
            x, y = _data(s)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        runs.append(model)
    for (n, p), (_, q) in zip(runs[0].named_parameters(), runs[1].named_parameters(), strict=True):
        torch.testing.assert_close(q, p, **EXACT, msg=n)


def test_config_defaults_to_the_models_and_a_disagreeing_one_is_refused():
    """The issue's case: a model converted with grad=6, update=16. QSGD without a config takes
    the model's (weights stay on the 16-bit grid); the paper config is refused, naming both."""
    cfg = WAGEUBNConfig.preset("paper").replace(grad=6, update=16)
    torch.manual_seed(0)
    model = quantize_(create_model("small_cnn", width=4), cfg)
    with pytest.raises(ValueError, match=r"config 'paper' disagrees with the config 'custom'.*"
                                         r"grad 8 vs 6; update 24 vs 16"):  # fmt: skip
        QSGD(model.parameters(), lr=0.05, config="paper")
    with pytest.raises(ValueError, match="disagrees"):
        QSGD.from_model(model, lr=0.05, config="paper")
    QSGD(model.parameters(), lr=0.05, config=cfg.replace(weight=6))  # forward-only fields: fine
    opt = QSGD(model.parameters(), lr=0.05, generator=torch.Generator().manual_seed(0))
    assert opt.config == cfg
    x, y = _data()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    roles = parameter_roles(model)
    for name, p in model.named_parameters():
        if roles[name] != "float":
            w = p.detach().double() * 2**15
            assert torch.equal(w, torch.round(w)), name  # Q(p, 16)


def test_from_model_of_an_unconverted_model_is_an_error():
    with pytest.raises(ValueError, match=r"no quantized layer.*quantize_\(model, config\)"):
        QSGD.from_model(create_model("small_cnn", width=4), lr=0.05)


def test_an_optimizer_built_before_quantize_finds_the_roles_after_it():
    """quantize_ keeps the parameter objects, so an optimizer of bare parameters built first
    sees the layers' roles once they exist (and a deep copy's layers are no one else's)."""
    model = create_model("small_cnn", width=4)
    opt = QSGD(model.parameters(), lr=0.05, config="paper")
    group = opt.param_groups[0]
    assert opt.role_of(model.conv1.weight, group) == "float"
    clone = quantize_(copy.deepcopy(model), "paper")
    assert opt.role_of(model.conv1.weight, group) == "float"  # the clone's layers hold copies
    quantize_(model, "paper")
    assert opt.role_of(model.conv1.weight, group) == "weight"
    assert (
        opt.role_of(model.bn2.bias, group) == "bn" and opt.role_of(model.fc.bias, group) == "float"
    )
    assert parameter_roles(clone) == parameter_roles(model)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_fused_update_equals_the_per_parameter_path(layout):
    """The fused kernels (quantized roles in buckets; channels_last operands passed as memory-
    order vectors with the draws copied into their layout) equal the per-parameter path bit for
    bit over three steps: momentum, weight decay, stochastic rounding of G."""
    from wageubn.quant.fusion import fusion

    results = []
    for per_param in (False, True):
        torch.manual_seed(0)
        model = quantize_(create_model("small_cnn", width=4), "paper")
        if layout == "channels_last":
            model = model.to(memory_format=torch.channels_last)
        opt = QSGD.from_model(
            model, lr=0.125, weight_decay=1e-3, generator=torch.Generator().manual_seed(3)
        )
        if per_param:
            opt._fusable = lambda role: False  # type: ignore[method-assign]
        x, y = _data()
        with fusion(True):
            for _ in range(3):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **EXACT)
