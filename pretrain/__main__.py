"""FastSiam pretraining.

Single GPU (the paper's setting) or CPU:
    python -m pretrain --config configs/pretrain/fastsiam_r50_in1k_25ep.yaml --data /data/imagenet/train \\
        --output-dir runs/fastsiam_r50_in1k_25ep
Several GPUs on one machine (batch_size stays the GLOBAL batch; lr follows it):
    torchrun --nproc_per_node=8 -m pretrain --config ... --data ... --output-dir ...
Several machines (run on each; output dir on a shared filesystem):
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 --rdzv_id=fs \\
        -m pretrain --config ... --data ... --output-dir ...
Overrides: any config key as key=value (YAML value), e.g. `epochs=3 batch_size=64 lr=null workers=4`.
Resume: rerun the same command; it continues from OUTPUT_DIR/checkpoint.pth.
"""
from __future__ import annotations

import argparse
import os
import sys

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a CPU shared with data-loader
# workers or other jobs, spinning threads that get descheduled made a CPU epoch 10x slower in our measurements
# (smoke_cpu.yaml: 74 s vs 5.5 s on a loaded 2-core machine); GPU runs barely use intra-op CPU threads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file (configs/pretrain/*.yaml); keys as in pretrain/config.py")
    parser.add_argument("--data", help="folder of images, searched recursively (labels ignored)")
    parser.add_argument("--output-dir", help="checkpoint.pth, log.jsonl, config.yaml, TensorBoard events")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, type-checked")
    args = parser.parse_args(argv)
    from pretrain import engine

    return run(engine.train, args)


def run(train, args) -> int:
    """Load the config from --config/--data/--output-dir/overrides, call ``train(cfg)``, and map failures to
    one-line errors: exit 2 for bad input, 1 for a failed run, 130 for a second Ctrl-C. Shared by every
    command that trains on pretrain's config (also tools.study.supervised)."""
    from pretrain import checkpoint, data, engine
    from pretrain.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides, data=args.data, output_dir=args.output_dir)
        train(cfg)
    except (ConfigError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (engine.RunError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted (second Ctrl-C): no checkpoint written for the running iteration", file=sys.stderr)
        return 130
    return 0

if __name__ == "__main__":
    sys.exit(main())
