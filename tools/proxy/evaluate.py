"""kNN top-1 of every kept checkpoint of the proxy's runs (and of the random init), into results.json."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from pretrain import knn
from pretrain.checkpoint import CheckpointError, load_checkpoint, load_model
from pretrain.model import SiameseNet
from tools.proxy.report import write_plot, write_table
from tools.proxy.runs import BenchError, epochs_done


class Evaluator:
    """Decodes the bank (pretraining images) and the test images once; kNN top-1 of a backbone."""

    def __init__(self, bank_paths, bank_labels, test_paths, test_labels, num_classes, image_size, device, k,
                 t):
        self.bank_images = knn.load_images(bank_paths, image_size)  # M x 3 x S x S uint8
        self.test_images = knn.load_images(test_paths, image_size)  # N x 3 x S x S uint8
        self.bank_labels, self.test_labels = bank_labels, test_labels
        self.num_classes, self.device, self.k, self.t = num_classes, device, k, t
        self.signature = dict(bank=len(bank_paths), test=len(test_paths), k=k, t=t, image_size=image_size)

    def __call__(self, backbone) -> float:
        backbone = backbone.to(self.device)
        bank = knn.extract_features(backbone, self.bank_images, self.device)
        test = knn.extract_features(backbone, self.test_images, self.device)
        pred = knn.knn_predict(test, bank, self.bank_labels, self.num_classes, self.k, self.t)
        return (pred.cpu() == self.test_labels).float().mean().item()


def load_results(path: Path) -> dict:
    if not path.exists():
        return {"evaluations": {}}
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise BenchError(f"{path} is not valid JSON; move it away to start the evaluations afresh") from None


def save_results(results: dict, out: Path) -> None:
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(tmp, out / "results.json")
    write_table(results, out / "table.md")
    write_plot(results, out / "plot.png")


def evaluate_pending(runs, results, evaluator, out: Path, random_cfg) -> int:
    """Evaluate the random init (per seed) and every kept checkpoint not yet in results; returns the count."""
    evals, done = results["evaluations"], 0
    for seed in sorted({r["seed"] for r in runs}):
        key = f"seed{seed}/random"
        if evals.get(key, {}).get("knn") != evaluator.signature:
            torch.manual_seed(seed)  # as the engine does before building the model
            model = SiameseNet(random_cfg.arch, random_cfg.dim, random_cfg.pred_dim, random_cfg.cifar_stem)
            evals[key] = dict(method="random", seed=seed, epoch=0, iteration=0, views=0,
                              knn_top1=evaluator(model.backbone), knn=evaluator.signature)
            done += 1
            save_results(results, out)
            print(f"seed {seed} random init: kNN top-1 {evals[key]['knn_top1']:.2%}", flush=True)
    for run in runs:
        for path in sorted(run["out"].glob("checkpoint_[0-9]*.pth")):
            key = f"seed{run['seed']}/{run['name']}/{path.stem}"
            try:
                ckpt = load_checkpoint(path)
            except CheckpointError:
                continue  # being replaced right now: next round
            old = evals.get(key, {})
            if old.get("knn") == evaluator.signature and old.get("iteration") == ckpt["iteration"]:
                continue
            c = ckpt["config"]
            model = load_model(path)
            evals[key] = dict(method=run["name"], seed=run["seed"], epoch=epochs_done(ckpt),
                              amp=c.get("_run", {}).get("amp"),
                              iteration=ckpt["iteration"],
                              views=ckpt["iteration"] * c["batch_size"] * c["num_views"],
                              knn_top1=evaluator(model.backbone), knn=evaluator.signature)
            done += 1
            save_results(results, out)
            e = evals[key]
            print(f"seed {run['seed']} {run['name']} epoch {e['epoch']} ({e['views']:,} views): "
                  f"kNN top-1 {e['knn_top1']:.2%}", flush=True)
    return done
