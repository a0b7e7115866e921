"""SiameseNet: head shapes, BN placement, no bias before BN, per-view vs joint BN, checkpoint key layout."""
import pytest
import torch
import torch.nn as nn
import torchvision

from pretrain.model import SiameseNet


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return SiameseNet("resnet18", dim=64, pred_dim=16)


def test_forward_shapes(net):
    views = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    p, z = net(views)
    assert len(p) == len(z) == 3
    assert all(t.shape == (4, 64) for t in p + z)
    assert all(zi.requires_grad for zi in z)  # the loss, not the model, owns the stop-gradient


def test_projector_and_predictor_layout():
    m = SiameseNet("resnet50")  # the paper's sizes: 2048-2048-2048 projector, 2048-512-2048 predictor
    lin = [m_ for m_ in m.projector if isinstance(m_, nn.Linear)]
    bns = [m_ for m_ in m.projector if isinstance(m_, nn.BatchNorm1d)]
    assert [(fc.in_features, fc.out_features) for fc in lin] == [(2048, 2048)] * 3
    assert all(fc.bias is None for fc in lin)  # every projector fc is followed by BN
    assert len(bns) == 3 and bns[-1].affine is False and all(b.affine for b in bns[:2])
    assert isinstance(m.projector[-1], nn.BatchNorm1d)  # BN on the output, no ReLU after it
    assert sum(isinstance(m_, nn.ReLU) for m_ in m.projector) == 2
    pl = [m_ for m_ in m.predictor if isinstance(m_, nn.Linear)]
    assert [(fc.in_features, fc.out_features) for fc in pl] == [(2048, 512), (512, 2048)]
    assert pl[0].bias is None and pl[1].bias is not None
    assert [type(m_) for m_ in m.predictor] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]


@pytest.mark.parametrize("arch, feat", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_projector_hidden_width_is_the_backbone_width(arch, feat):
    """SimSiam's builder (facebookresearch/simsiam simsiam/builder.py): hidden fc layers prev_dim wide, the
    backbone's feature width; only the output fc is `dim`. ResNet-18: 512-512-512-2048."""
    m = SiameseNet(arch, dim=2048, pred_dim=512)
    lin = [m_ for m_ in m.projector if isinstance(m_, nn.Linear)]
    assert [(fc.in_features, fc.out_features) for fc in lin] == [(feat, feat), (feat, feat), (feat, 2048)]
    bns = [m_.num_features for m_ in m.projector if isinstance(m_, nn.BatchNorm1d)]
    assert bns == [feat, feat, 2048]
    p, z = m.eval()([torch.randn(2, 3, 32, 32)])
    assert p[0].shape == z[0].shape == (2, 2048)


def test_backbone_is_torchvision_resnet_without_fc():
    m = SiameseNet("resnet50")
    ref = torchvision.models.resnet50().state_dict()
    keys = {k[len("backbone."):] for k in m.state_dict() if k.startswith("backbone.")}
    assert keys == {k for k in ref if not k.startswith("fc.")}
    assert {k.split(".")[0] for k in m.state_dict()} == {"backbone", "projector", "predictor"}
    # zero_init_residual: the last BN of every bottleneck starts at gamma = 0
    blocks = [*m.backbone.layer1, *m.backbone.layer4]
    assert all(b.bn3.weight.abs().sum() == 0 for b in blocks)


def test_cifar_stem():
    m = SiameseNet("resnet18", dim=32, pred_dim=8, cifar_stem=True)
    assert m.backbone.conv1.kernel_size == (3, 3) and m.backbone.conv1.stride == (1, 1)
    assert isinstance(m.backbone.maxpool, nn.Identity)
    assert m.backbone(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_bn_modes_differ_in_train_and_agree_in_eval():
    torch.manual_seed(0)
    per_view = SiameseNet("resnet18", dim=32, pred_dim=8, bn_mode="per_view")
    joint = SiameseNet("resnet18", dim=32, pred_dim=8, bn_mode="joint")
    joint.load_state_dict(per_view.state_dict())
    # views with different statistics: per-view BN normalises each separately, joint BN over both
    views = [torch.randn(4, 3, 32, 32), 3 * torch.randn(4, 3, 32, 32) + 1]
    _, z_pv = per_view(views)
    _, z_j = joint(views)
    assert not torch.allclose(z_pv[0], z_j[0], atol=1e-4)
    # the per-view forward equals separate calls, i.e. BN statistics computed per view
    per_view.load_state_dict(joint.state_dict())
    z_sep = per_view._pz(views[1])[1]
    assert torch.allclose(per_view(views)[1][1], z_sep, atol=1e-5)
    per_view.eval()
    joint.eval()
    joint.load_state_dict(per_view.state_dict())
    assert torch.allclose(per_view(views)[1][0], joint(views)[1][0], atol=1e-4)
