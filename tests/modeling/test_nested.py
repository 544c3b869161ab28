"""The one implementation of Eq. 1: topology, pruning, 2D/3D, U-Net as the non-dense case."""
import pytest
import torch

from maskrcnn_pp.modeling.nested import NestedSkipPathways, required_nodes


def test_required_nodes_follow_eq1():
    # X^{0,1} needs x^{0,0} and U(x^{1,0}) only.
    assert required_nodes([(0, 1)]) == {(0, 0), (1, 0), (0, 1)}
    # X^{0,2} needs X^{0,0}, X^{0,1}, X^{1,1} and, through them, x^{1,0} and x^{2,0}.
    assert required_nodes([(0, 2)]) == {(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (0, 2)}
    # Without dense links (U-Net) X^{0,2} skips X^{0,1}.
    assert required_nodes([(0, 2)], dense=False) == {(0, 0), (1, 0), (2, 0), (1, 1), (0, 2)}


def _count_node_calls(net, fn):
    calls = []
    hooks = [module.register_forward_hook(lambda m, i, o, key=key: calls.append(key))
             for key, module in net.nodes.items()]
    try:
        fn()
    finally:
        for h in hooks:
            h.remove()
    return calls


def test_pruned_output_equals_full_network_and_skips_unneeded_nodes():
    torch.manual_seed(0)
    net = NestedSkipPathways((4, 8, 16, 32), in_channels=1, norm="BN").eval()
    x = torch.randn(2, 1, 24, 24)
    full_calls = _count_node_calls(net, lambda: net(x, [(0, j) for j in (1, 2, 3)]))
    full = net(x, [(0, j) for j in (1, 2, 3)])
    assert len(full_calls) == 4 + 6  # four encoder nodes, six skip nodes
    for j in (1, 2, 3):
        calls = _count_node_calls(net, lambda j=j: net(x, [(0, j)]))
        assert sorted(calls) == sorted(net.key(n) for n in required_nodes([(0, j)]))
        pruned = net(x, [(0, j)])[(0, j)]
        assert torch.allclose(pruned, full[(0, j)], atol=1e-6)
    # output X^{0,1} never touches the two deepest encoder levels
    assert "x3_0" not in _count_node_calls(net, lambda: net(x, [(0, 1)]))


def test_gradients_reach_every_node_2d_and_3d():
    for dims, shape in ((2, (1, 2, 17, 19)), (3, (1, 2, 9, 10, 11))):
        net = NestedSkipPathways((4, 8, 8), in_channels=2, dims=dims, norm="GN",
                                 upsample="transpose")
        out = net(torch.randn(shape), [(0, 1), (0, 2)])
        assert out[(0, 2)].shape[2:] == shape[2:]  # odd sizes handled by crop/pad
        (out[(0, 1)].sum() + out[(0, 2)].sum()).backward()
        for name, p in net.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_non_dense_builds_exactly_the_unet_decoder():
    unet = NestedSkipPathways((4, 8, 16, 32), in_channels=1, dense=False)
    assert unet.skip_nodes() == [(2, 1), (1, 2), (0, 3)]
    with pytest.raises(ValueError, match="does not exist"):
        unet(torch.randn(1, 1, 16, 16), [(0, 1)])


def test_external_encoder_features_and_validation():
    net = NestedSkipPathways((8, 8, 8), norm="")
    feats = [torch.randn(1, 8, 16, 16), torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)]
    out = net(feats, [(0, 2), (1, 1)])
    assert out[(0, 2)].shape == (1, 8, 16, 16) and out[(1, 1)].shape == (1, 8, 8, 8)
    with pytest.raises(ValueError, match="expected 3 encoder features"):
        net(feats[:2], [(0, 1)])
    with pytest.raises(ValueError, match="unknown norm"):
        NestedSkipPathways((8, 8), norm="LayerNormX")


def test_node_init_msra_is_he_normal_and_default_keeps_pytorch_init():
    torch.manual_seed(0)
    default = NestedSkipPathways([64, 64], in_channels=64, norm="GN")
    torch.manual_seed(0)
    msra = NestedSkipPathways([64, 64], in_channels=64, norm="GN", node_init="msra")
    conv_d = default.nodes["x0_1"][0]
    conv_m = msra.nodes["x0_1"][0]
    fan_out = conv_m.weight.shape[0] * 9
    assert conv_m.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)
    # PyTorch's default (kaiming uniform, a=sqrt(5)): std = 1 / sqrt(3 * fan_in)
    fan_in = conv_d.weight.shape[1] * 9
    assert conv_d.weight.std().item() == pytest.approx((1 / (3 * fan_in)) ** 0.5, rel=0.05)
    with pytest.raises(ValueError, match="unknown node initialization 'xavier'"):
        NestedSkipPathways([8, 8], in_channels=1, node_init="xavier")
