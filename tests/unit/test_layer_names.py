"""Layer names known without a model (advneurons.models.layer_names) against the built models, and the one
hook helper (advneurons.models.hooks)."""

import pytest
import torch

from advneurons.models.hooks import captured_outputs, hooked
from advneurons.models.layer_names import CONV_LAYERS, FIG10_LAYERS, FIG14_LAYERS, SNS_LAYERS, arch_of
from tiny_models import tiny_model


@pytest.mark.parametrize("arch", ["vgg16", "resnet18"])
def test_conv_layers_are_the_models_conv_layers_in_order(arch):
    layers = [n for n in tiny_model(arch).layers() if n != "fc" and not n.endswith("sc")]
    assert CONV_LAYERS[arch] == layers
    for chosen in (SNS_LAYERS, FIG10_LAYERS, FIG14_LAYERS):
        assert set(chosen[arch]) <= set(layers)
    assert arch_of(layers) == arch


def test_hooks_are_removed_also_when_the_block_raises(tiny_vgg):
    seen = []
    with pytest.raises(RuntimeError):
        with hooked(on_output=[(tiny_vgg.fc, lambda _m, _i, out: seen.append(out.shape))]):
            tiny_vgg(torch.rand(2, 3, 32, 32))
            raise RuntimeError("inside")
    tiny_vgg(torch.rand(2, 3, 32, 32))
    assert seen == [torch.Size([2, 10])]  # the second pass is not seen
    assert not tiny_vgg.fc._forward_hooks and not tiny_vgg.fc._forward_pre_hooks


def test_output_hook_result_replaces_the_output_and_inputs_are_seen(tiny_vgg):
    inputs = []
    x = torch.rand(3, 3, 32, 32)
    with hooked(on_output=[(tiny_vgg.fc, lambda _m, _i, out: out * 0)],
                on_input=[(tiny_vgg.fc, lambda _m, i: inputs.append(i[0]))]):
        logits = tiny_vgg(x)
    assert torch.count_nonzero(logits) == 0 and inputs[0].shape[0] == 3
    with captured_outputs(tiny_vgg.fc) as outs:
        logits = tiny_vgg(x)
    assert torch.equal(outs[0], logits)
