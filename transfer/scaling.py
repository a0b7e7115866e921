"""``--ims-per-gpu``: fit a protocol to fewer or smaller GPUs by the linear scaling rule.

The protocols are written for batch 16 (8 GPUs x 2 images; Cityscapes: 8 x 1). With k = new batch / config
batch, the rule (Goyal et al. 2017: "when the minibatch size is multiplied by k, multiply the learning rate by
k") keeps the number of images per schedule phase: lr x k, and every count of iterations / k (training
length, lr steps, warmup, evaluation and checkpoint periods, PreciseBN iterations). This is what the MoCo
authors advise for fewer GPUs (moco#11: "IMS_PER_BATCH 8, BASE_LR 0.01, 2x STEPS/MAX_ITER"), and, as they say,
"not fully equivalent" to the protocol: BN statistics come from fewer images per GPU.
"""
from __future__ import annotations

ITERATION_KEYS = ("SOLVER.MAX_ITER", "SOLVER.WARMUP_ITERS", "SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD",
                  "TEST.PRECISE_BN.NUM_ITER")


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _set(cfg, key: str, value) -> None:
    *path, last = key.split(".")
    node = cfg
    for part in path:
        node = node[part]
    node[last] = value


def scale_schedule(cfg, ims_per_gpu: int, world_size: int) -> dict:
    """Rescale `cfg` (a detectron2 CfgNode, not frozen) in place so that SOLVER.IMS_PER_BATCH becomes
    ims_per_gpu x world_size. Returns {"factor": k, "changed": {key: [old, new]}, ...}; no change at k = 1."""
    if ims_per_gpu < 1:
        raise ValueError(f"--ims-per-gpu must be at least 1, got {ims_per_gpu}")
    old_batch = cfg.SOLVER.IMS_PER_BATCH
    new_batch = ims_per_gpu * world_size
    k = new_batch / old_batch
    record = {"ims_per_gpu": ims_per_gpu, "world_size": world_size, "config_batch": old_batch, "factor": k,
              "changed": {}}
    if new_batch == old_batch:
        return record

    def change(key, new):
        old = _get(cfg, key)
        if new != old:
            _set(cfg, key, new)
            record["changed"][key] = [list(old) if isinstance(old, tuple) else old,
                                      list(new) if isinstance(new, tuple) else new]

    change("SOLVER.IMS_PER_BATCH", new_batch)
    change("SOLVER.BASE_LR", cfg.SOLVER.BASE_LR * k)
    for key in ITERATION_KEYS:
        old = _get(cfg, key)
        # a period of 0 means "never" and stays 0; anything else stays at least 1
        change(key, max(1, round(old / k)) if old > 0 else old)
    change("SOLVER.STEPS", tuple(round(s / k) for s in cfg.SOLVER.STEPS))
    return record
