"""Benchmark any weights against ImageNet weights on one's own COCO-format data, in one command.

    python -m tools.benchmark --train ann/train.json:img/train --test ann/val.json:img/val \\
        --weights mine=weights/fs.pth --imagenet weights/imagenet_torchvision.pth --random \\
        --config configs/transfer/coco_R_50_FPN_1x.yaml --seeds 0 1 2 --runs runs/mine

__main__.py is the command line (the cells are planned and run by tools/launch/matrix.py, as
`python -m tools.launch`'s are), inputs.py checks the data, weights and configs before anything runs,
report.py turns the cells' results.json into the table (RUNS/benchmark.md, RUNS/benchmark.json).
Imports pretrain/, transfer/, tools.launch and tools.results.
"""
