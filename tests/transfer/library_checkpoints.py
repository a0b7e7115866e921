"""Checkpoints built the way each pretraining library builds and saves them, around a torchvision ResNet.

None of the libraries is installed: each builder assembles the same module tree from torch.nn pieces (the
attribute names are what make the keys) and the same checkpoint dict, as read in the library's code (cited in
transfer/layouts.py). Two shortcuts keep the files small and change no key: momentum/teacher copies share the
online network's tensors (the libraries deepcopy them; torch.save writes a shared tensor once), and the heads
are narrow.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import types
from dataclasses import dataclass, field

import numpy as np
import torch
import torchvision
from torch import nn


@dataclass
class Case:
    ckpt: dict
    state: dict              # the dict in ckpt that holds the weights
    label: str               # what the converter should print
    unknown_key: str         # a key no head of the library has, spelled as `state` spells keys
    shown_unknown: str = ""  # ... and as the converter's error shows it (default: the same)
    pickling: object = field(default=contextlib.nullcontext)  # context needed to pickle library objects

    def save(self, path) -> None:
        with self.pickling():
            torch.save(self.ckpt, path)


def resnet18(sd: dict, fc: str = "identity") -> torchvision.models.ResNet:
    """torchvision's resnet18 holding `sd`; its fc as the library leaves it ("identity", "keep", "delete")."""
    net = torchvision.models.resnet18()
    net.load_state_dict(sd)
    if fc == "identity":
        net.fc = nn.Identity()
    elif fc == "delete":
        del net.fc
    return net


def mlp(*dims: int) -> nn.Sequential:
    """Linear-BN-ReLU blocks and a last Linear, the shape of most projectors and predictors."""
    layers = []
    for d_in, d_out in zip(dims[:-2], dims[1:-1], strict=True):
        layers += [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(dims[-2], dims[-1]))


def module(**children: nn.Module) -> nn.Module:
    m = nn.Module()
    for name, child in children.items():
        setattr(m, name, child)
    return m


def ddp(sd: dict) -> dict:
    return {"module." + k: v for k, v in sd.items()}


def sgd_state(m: nn.Module) -> dict:
    return torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9).state_dict()


def lightning(state: dict, model: nn.Module, **extra) -> dict:
    """The entries Lightning's CheckpointConnector.dump_checkpoint writes (lightning 2.x)."""
    return {"epoch": 9, "global_step": 990, "pytorch-lightning_version": "2.4.0", "state_dict": state,
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"completed": 9}}}},
            "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None, "dirpath": "ckpts",
                                                                "kth_value": torch.tensor(float("inf"))}},
            "optimizer_states": [sgd_state(model)], "lr_schedulers": [{"last_epoch": 9, "base_lrs": [0.1]}],
            **extra}


# ---------------------------------------------------------------- lightly
def lightly_sequential(sd: dict) -> Case:
    """examples/pytorch/fastsiam.py: backbone = nn.Sequential(*list(resnet.children())[:-1]) in a plain
    module beside SimSiamProjectionHead and SimSiamPredictionHead; the example saves nothing itself, so: its
    state_dict."""
    backbone = nn.Sequential(*list(resnet18(sd, fc="keep").children())[:-1])
    model = module(backbone=backbone, projection_head=mlp(512, 64, 32), prediction_head=mlp(32, 16, 32))
    state = model.state_dict()
    return Case(state, state, "lightly (nn.Sequential backbone)", "projection_head2.weight")


def lightly_sequential_alone(sd: dict) -> Case:
    """The same backbone saved alone: keys 0.weight, 1.*, 4.0.conv1.weight ... 7.1.bn2.*."""
    state = nn.Sequential(*list(resnet18(sd, fc="keep").children())[:-1]).state_dict()
    return Case(state, state, "lightly (nn.Sequential backbone)", "10.weight")


def lightly_benchmark(sd: dict) -> Case:
    """benchmarks/imagenet/resnet50/byol.py as a Lightning checkpoint: resnet with fc = Identity as backbone,
    BYOL heads, teacher copies and OnlineLinearClassifier (classification_head); save_hyperparameters()."""
    backbone, projection = resnet18(sd), mlp(512, 64, 32)
    model = module(backbone=backbone, projection_head=projection, prediction_head=mlp(32, 64, 32),
                   teacher_backbone=backbone, teacher_projection_head=projection,
                   online_classifier=module(classification_head=nn.Linear(512, 10)))
    state = model.state_dict()
    ckpt = lightning(state, model, hparams_name="kwargs",
                     hyper_parameters={"batch_size_per_device": 128, "num_classes": 10})
    return Case(ckpt, state, "lightly (torchvision backbone)", "online_classifier2.weight")


# ---------------------------------------------------------------- solo-learn
def solo_learn(sd: dict) -> Case:
    """solo/methods/base.py BaseMomentumMethod + methods/byol.py: backbone (fc = Identity), classifier,
    momentum_backbone, projector, momentum_projector, predictor; Lightning's trainer.save_checkpoint."""
    backbone, projector = resnet18(sd), mlp(512, 64, 32)
    model = module(backbone=backbone, classifier=nn.Linear(512, 10), momentum_backbone=backbone,
                   projector=projector, momentum_projector=projector, predictor=mlp(32, 64, 32))
    state = model.state_dict()
    return Case(lightning(state, model), state, "solo-learn Lightning checkpoint", "classifier2.weight")


# ---------------------------------------------------------------- OpenMMLab
@contextlib.contextmanager
def mmengine_importable():
    """Lets pickle name HistoryBuffer as mmengine.logging.history_buffer.HistoryBuffer (mmengine is not
    installed; the converter never imports it)."""
    names = ["mmengine", "mmengine.logging", "mmengine.logging.history_buffer"]
    saved = {n: sys.modules.get(n) for n in names}
    for n in names:
        sys.modules[n] = types.ModuleType(n)
    sys.modules[names[-1]].HistoryBuffer = HistoryBuffer
    try:
        yield
    finally:
        for n, m in saved.items():
            if m is None:
                del sys.modules[n]
            else:
                sys.modules[n] = m


class HistoryBuffer:
    """mmengine/logging/history_buffer.py: a plain object holding numpy arrays of logged values."""

    def __init__(self, values):
        self.max_length = 1000000
        self._log_history = np.array(values)
        self._count_history = np.ones(len(values))


HistoryBuffer.__module__ = "mmengine.logging.history_buffer"


def mmpretrain(sd: dict) -> Case:
    """mmpretrain's self-supervisors on its ResNet (torchvision's names, no fc): backbone, neck, head,
    momentum_encoder = CosineEMA(Sequential(backbone, neck)) (module.*, steps), MoCo's queue, queue_ptr; saved
    by mmengine's Runner.save_checkpoint with meta and message_hub."""
    backbone, neck = resnet18(sd, fc="delete"), mlp(512, 64, 32)
    ema = module(module=nn.Sequential(backbone, neck))
    ema.register_buffer("steps", torch.tensor(100))
    model = module(backbone=backbone, neck=neck, head=module(predictor=mlp(32, 64, 32)), momentum_encoder=ema)
    model.register_buffer("queue", torch.randn(32, 64))
    model.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
    state = collections.OrderedDict(model.state_dict())
    ckpt = {"meta": {"epoch": 200, "iter": 250200, "cfg": "model = dict(type='MoCo', ...)", "seed": 0,
                     "experiment_name": "mocov2_resnet50", "time": "20230101_000000",
                     "mmengine_version": "0.10.3", "dataset_meta": {"classes": ("a", "b")}},
            "state_dict": state,
            "message_hub": {"log_scalars": collections.OrderedDict({"train/loss": HistoryBuffer([6.1, 5.9])}),
                            "runtime_info": collections.OrderedDict(epoch=200, iter=250200, max_iters=250200),
                            "resumed_keys": collections.OrderedDict(epoch=False)},
            "optimizer": sgd_state(model), "param_schedulers": [{"last_step": 250200, "base_lrs": [0.03]}]}
    return Case(ckpt, state, "mmselfsup/mmpretrain", "neck2.weight", pickling=mmengine_importable)


def densecl(sd: dict) -> Case:
    """WXinlong/DenseCL openselfsup/models/densecl.py (OpenSelfSup, mmselfsup 0.x): encoder_q =
    Sequential(backbone, neck), encoder_k, backbone = encoder_q[0], queue, queue2; mmcv's save_checkpoint."""
    backbone, neck = resnet18(sd, fc="delete"), mlp(512, 64, 32)
    model = module(encoder_q=nn.Sequential(backbone, neck), encoder_k=nn.Sequential(backbone, neck),
                   backbone=backbone)
    for name, t in [("queue", torch.randn(32, 64)), ("queue_ptr", torch.zeros(1, dtype=torch.long)),
                    ("queue2", torch.randn(32, 64)), ("queue2_ptr", torch.zeros(1, dtype=torch.long))]:
        model.register_buffer(name, t)
    state = collections.OrderedDict(model.state_dict())
    ckpt = {"meta": {"mmcv_version": "1.0.3", "time": "Thu Dec 10 2020", "epoch": 200, "iter": 1000},
            "state_dict": state, "optimizer": sgd_state(model)}
    return Case(ckpt, state, "mmselfsup/mmpretrain", "queue3")


# ---------------------------------------------------------------- VISSL
def vissl(sd: dict) -> Case:
    """vissl/models/trunks/resnext.py (_feature_blocks ModuleDict of torchvision's modules) and the checkpoint
    classy_state_dict.base_model.model.{trunk, heads} (vissl/models/base_ssl_model.py get_classy_state)."""
    net = resnet18(sd)
    trunk = module(_feature_blocks=nn.ModuleDict(
        [("conv1", net.conv1), ("bn1", net.bn1), ("conv1_relu", net.relu), ("maxpool", net.maxpool),
         ("layer1", net.layer1), ("layer2", net.layer2), ("layer3", net.layer3), ("layer4", net.layer4),
         ("avgpool", net.avgpool), ("flatten", nn.Flatten(1))]))
    heads = nn.ModuleList([module(projection_head=mlp(512, 64, 32),
                                  prototypes0=nn.Linear(32, 16, bias=False))])
    trunk_state = trunk.state_dict()
    model = {"trunk": trunk_state, "heads": heads.state_dict()}
    ckpt = {"phase_idx": 9, "iteration": 1000, "train_phase_idx": 9, "iteration_num": 1000,
            "classy_state_dict": {"train": True, "base_model": {"model": model}, "meters": [],
                                  "optimizer": {"name": "sgd"}, "phase_idx": 9, "train_phase_idx": 9,
                                  "num_updates": 1000, "losses": [5.2], "hooks": {}}}
    return Case(ckpt, trunk_state, "VISSL trunk", "mystery.weight", "trunk.mystery.weight")


# ---------------------------------------------------------------- research repositories
def dino(sd: dict) -> Case:
    """facebookresearch/dino main_dino.py: student and teacher state dicts of
    DDP(MultiCropWrapper(backbone, head)) with backbone.fc = Identity, plus args (argparse.Namespace); the
    teacher is the one to convert, so the student's conv1 differs here."""
    wrapper = module(backbone=resnet18(sd), head=module(mlp=mlp(512, 64, 32), last_layer=nn.Linear(32, 16)))
    teacher = ddp(wrapper.state_dict())
    student = dict(teacher) | {"module.backbone.conv1.weight": torch.zeros_like(sd["conv1.weight"])}
    ckpt = {"student": student, "teacher": teacher, "optimizer": sgd_state(wrapper), "epoch": 100,
            "args": argparse.Namespace(arch="resnet18", out_dim=16, lr=0.03, data_path="/data/train"),
            "dino_loss": {"center": torch.zeros(1, 16)}}
    return Case(ckpt, teacher, "DINO checkpoint (teacher)", "module.mystery.weight")


def swav(sd: dict) -> Case:
    """facebookresearch/swav src/resnet50.py (torchvision names, padding layer, projection_head, prototypes)
    saved from DDP: the released swav_800ep_pretrain.pth.tar is this state dict."""
    net = resnet18(sd, fc="delete")
    net.padding, net.projection_head = nn.ConstantPad2d(1, 0.0), mlp(512, 64, 32)
    net.prototypes = nn.Linear(32, 16, bias=False)
    state = ddp(net.state_dict())
    return Case(state, state, "SwAV checkpoint", "module.mystery.weight")


def exclude_bias_and_norm(p):  # barlowtwins main.py's LARS filter, which its optimizer state pickles
    return p.ndim == 1


@contextlib.contextmanager
def as_main(fn):
    """Pickle `fn` as __main__.<name>, as it is when barlowtwins' main.py saves."""
    main, module_name = sys.modules["__main__"], fn.__module__
    setattr(main, fn.__name__, fn)
    fn.__module__ = "__main__"
    try:
        yield
    finally:
        fn.__module__ = module_name
        delattr(main, fn.__name__)


def barlow_twins(sd: dict) -> Case:
    """facebookresearch/barlowtwins main.py: checkpoint.pth = {epoch, model: DDP state of backbone (fc =
    Identity), projector, bn (affine=False), optimizer: LARS state whose param_groups hold the filters}."""
    model = module(backbone=resnet18(sd), projector=mlp(512, 64, 32), bn=nn.BatchNorm1d(32, affine=False))
    state = ddp(model.state_dict())
    groups = [{"lr": 0.2, "weight_decay": 1e-6, "momentum": 0.9, "eta": 0.001,
               "weight_decay_filter": exclude_bias_and_norm, "lars_adaptation_filter": exclude_bias_and_norm,
               "params": [0, 1]}]
    ckpt = {"epoch": 10, "model": state, "optimizer": {"state": {}, "param_groups": groups}}
    return Case(ckpt, state, "Barlow Twins checkpoint", "module.mystery.weight",
                pickling=lambda: as_main(exclude_bias_and_norm))


def byol_pytorch(sd: dict) -> Case:
    """lucidrains/byol-pytorch: BYOL(net) with net (fc kept, unused), online_encoder = NetWrapper(net) with
    its projector (MLP: .net), online_predictor, target_encoder (a deepcopy of online_encoder); its
    state_dict."""
    net = resnet18(sd, fc="keep")
    online = module(net=net, projector=module(net=mlp(512, 64, 32)))
    learner = module(net=net, online_encoder=online, online_predictor=module(net=mlp(32, 64, 32)),
                     target_encoder=online)
    state = learner.state_dict()
    return Case(state, state, "byol-pytorch (lucidrains) checkpoint", "mystery.weight")


def pixpro(sd: dict) -> Case:
    """zdaxie/PixPro contrast/models/PixPro.py: encoder (contrast/resnet.py, early_return: no fc), projector
    (MLP2d: linear1, bn1, linear2), encoder_k, projector_k, value_transform; main_pretrain.py saves opt
    (argparse.Namespace), model (DDP), optimizer, scheduler, epoch."""
    encoder = resnet18(sd, fc="delete")
    projector = module(linear1=nn.Conv2d(512, 64, 1), bn1=nn.BatchNorm2d(64), linear2=nn.Conv2d(64, 32, 1))
    model = module(encoder=encoder, projector=projector, encoder_k=encoder, projector_k=projector,
                   value_transform=nn.Conv2d(32, 32, 1))
    state = ddp(model.state_dict())
    ckpt = {"opt": argparse.Namespace(arch="resnet18", pixpro_p=2.0, batch_size=128), "model": state,
            "optimizer": sgd_state(model), "scheduler": {"last_epoch": 100}, "epoch": 100}
    return Case(ckpt, state, "PixPro checkpoint", "module.mystery.weight")


CASES = {f.__name__: f for f in (lightly_sequential, lightly_sequential_alone, lightly_benchmark, solo_learn,
                                 mmpretrain, densecl, vissl, dino, swav, barlow_twins, byol_pytorch, pixpro)}
