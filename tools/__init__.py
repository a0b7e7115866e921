"""The project's tools, one sub-package per job; every tool runs as `python -m tools.<job>`.

    results/    the runs tree, provenance, statistics over seeds, the paper's numbers   (imports no tools)
    data/       CIFAR-10, synthetic COCO-format data, the study's scenes, subsets, JPEGs (imports no tools)
    launch/     the transfer matrix: cells, local and Slurm launchers; `python -m tools.launch`
    figures/    Fig. 2 and Figs. 4-7 and their shared plotting                  (imports results)
    bench/      speed and memory figures: augmentation, training step, gpu.sh   (imports data)
    proxy/      the CIFAR-10 kNN proxy, FastSiam vs SimSiam                      (imports data)
    evaluate/   kNN and linear probe of any checkpoint the converter reads       (imports no tools)
    benchmark/  any weights vs ImageNet weights on one's own COCO-format data    (imports launch, results)
    study/      the small-scale study, pretraining to detection         (imports data, figures, results)
    ci/, install/  shell scripts: the CI Slurm cluster, the detectron2 install
    tables.py   Tables 1-5 beside the paper's numbers                            (imports results)
    demo.py     `make demo`: the whole pipeline at toy size, through the commands above as subprocesses

Arrows only point down this list's dependencies: a package imports pretrain/, transfer/ and the packages
named beside it, never a command-line module (`__main__.py`, tables.py, demo.py) and never one that
imports it; tests/tools/test_layout.py checks this. pretrain/ and transfer/ never import tools.
"""
