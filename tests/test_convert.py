"""quantize_ / to_float_: which modules swap, what stays float, errors for the unsupported."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from wageubn import UnsupportedModuleError, WAGEUBNConfig, config_of, quantize_, to_float_
from wageubn.nn import QuantBatchNorm2d, QuantConv2d, QuantLinear, QuantReLU


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.0), nn.Linear(4 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 3),
    )  # fmt: skip


def test_default_keeps_stem_and_head_float():
    m = quantize_(net(), "paper")
    types = [type(x) for x in m]
    assert types[0] is nn.Conv2d and types[-1] is nn.Linear
    assert types[1] is QuantBatchNorm2d and types[2] is QuantReLU and types[3] is QuantConv2d
    assert types[9] is QuantLinear
    assert m[2].inplace  # kept for to_float_, but QuantReLU never works in place
    assert config_of(m) == WAGEUBNConfig.preset("paper")


def test_switches_quantize_stem_and_head():
    cfg = WAGEUBNConfig.preset("paper").replace(quantize_stem=True, quantize_head=True)
    m = quantize_(net(), cfg)
    assert type(m[0]) is QuantConv2d and type(m[-1]) is QuantLinear


def test_parameters_are_shared_and_snapped_to_grids():
    m = net()
    params = list(m.parameters())
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    quantize_(m, "paper")
    assert [id(p) for p in m.parameters()] == [id(p) for p in params]
    assert any(q is m[3].weight for q in opt.param_groups[0]["params"])
    w = m[3].weight.detach().double() * 2**15
    assert torch.equal(w, torch.round(w))  # Q(w, 16): the weight_init grid
    assert not torch.equal(m[0].weight * 2**15, torch.round(m[0].weight * 2**15))  # stem: float


def test_to_float_round_trip_restores_torch_modules():
    m = net()
    ref = copy.deepcopy(m)
    quantize_(m, WAGEUBNConfig.preset("paper").replace(weight_init=None))
    to_float_(m)
    assert [type(a) for a in m] == [type(b) for b in ref]
    with pytest.raises(ValueError, match="no quantized layer"):
        config_of(m)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(m(x), ref(x), rtol=0, atol=0)


def test_filter_fn_selects_modules():
    m = quantize_(net(), "paper", filter_fn=lambda mod, fqn: fqn in {"", "3", "4"})
    assert type(m[3]) is QuantConv2d and type(m[4]) is QuantBatchNorm2d
    assert type(m[1]) is nn.BatchNorm2d and type(m[2]) is nn.ReLU


def test_unsupported_module_is_named():
    m = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3), nn.Softplus(), nn.Flatten(), nn.Linear(2, 2)
    )
    with pytest.raises(
        UnsupportedModuleError, match=r"2 is a torch.nn.modules.activation.Softplus.*filter_fn"
    ):
        quantize_(m, "paper")
    quantize_(m, "paper", filter_fn=lambda mod, fqn: not isinstance(mod, nn.Softplus))
    assert type(m[1]) is QuantConv2d


def test_every_unsupported_module_is_listed_at_once_and_nothing_changes():
    """Three unsupported modules: one error names all three; the model is left unconverted."""
    m = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.Softplus(), nn.Conv2d(2, 2, 3), nn.PReLU(), nn.Mish(),
        nn.Flatten(), nn.Linear(2, 2),
    )  # fmt: skip
    with pytest.raises(UnsupportedModuleError) as info:
        quantize_(m, "paper")
    msg = str(info.value)
    assert "3 modules cannot be converted" in msg and "\n" not in msg
    for name in (
        "1 is a torch.nn.modules.activation.Softplus",
        "3 is a torch.nn.modules.activation.PReLU, which has parameters of its own",
        "4 is a",
        "Mish",
    ):
        assert name in msg
    assert type(m[2]) is nn.Conv2d
    with pytest.raises(ValueError, match="no quantized layer"):
        config_of(m)  # nothing was converted


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"),
        nn.Conv2d(2, 2, 3, padding=1, padding_mode="replicate"),
        nn.Conv2d(2, 2, 3, padding="same"),
    ],
    ids=["reflect", "circular", "replicate", "same"],
)
def test_int8_refuses_padding_it_cannot_run_at_quantize_time(conv):
    """arithmetic='int8' pads with zeros by a number of pixels only: other paddings are refused by
    quantize_ (naming the module and the fix), not at the first forward; simulated presets and
    the float stem keep them."""
    m = nn.Sequential(nn.Conv2d(1, 2, 3, padding_mode="reflect", padding=1), conv, nn.ReLU())
    with pytest.raises(UnsupportedModuleError, match=r"1 is a Conv2d with padding.*int8") as info:
        quantize_(m, "int8")
    assert "0 is" not in str(info.value)  # the float stem runs in torch: any padding works
    assert type(m[1]) is nn.Conv2d
    quantize_(m, "paper")
    assert type(m[1]) is QuantConv2d
    with pytest.raises(UnsupportedModuleError, match="1 is a Conv2d with padding"):
        quantize_(m, "int8")  # re-configuring a quantized model is checked the same way
    assert m[1].config.arithmetic != "int8"


def test_module_with_own_parameters_is_not_skipped():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.ones(1))
            self.conv = nn.Conv2d(1, 1, 1)

    m = nn.Sequential(nn.Conv2d(1, 1, 1), Scale(), nn.Linear(1, 1))
    with pytest.raises(
        UnsupportedModuleError, match="1 is a .*Scale, which has parameters of its own"
    ):
        quantize_(m, "paper")


def test_bad_arguments():
    with pytest.raises(ValueError, match="did you mean 'paper'"):
        quantize_(net(), "papr")
    with pytest.raises(TypeError, match="wrap it in nn.Sequential"):
        quantize_(nn.Conv2d(1, 1, 1), "paper")
    with pytest.raises(TypeError, match="nn.Module"):
        quantize_("model", "paper")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="filter_fn"):
        quantize_(net(), "paper", filter_fn=3)  # type: ignore[arg-type]


def test_requantize_changes_config():
    m = quantize_(net(), "paper")
    quantize_(m, "paper_e2_16")
    assert m[3].config.error2 == 16 and m[1].config.error2 == 16


def test_config_of_names_layers_that_disagree():
    """config_of reads the layers, the config's only owners: layers converted with two configs
    are named with the fields that differ."""
    m = quantize_(net(), "paper")
    assert config_of(m).name == "paper"
    quantize_(m, "paper_e2_16", filter_fn=lambda mod, fqn: fqn == "3")
    with pytest.raises(ValueError, match=r"disagree: 1, 2, 4, 5 and \d+ more hold 'paper'; 3 hold "
                                         r"'paper_e2_16' with error2=16 \(not 8\)"):  # fmt: skip
        config_of(m)
    with pytest.raises(TypeError, match="nn.Module"):
        config_of("model")  # type: ignore[arg-type]
