"""Fine-tune converted weights with detectron2: the paper's four transfer protocols (Tables 1-5).

    # one GPU (the protocol's batch 16 on one card), then 8 GPUs
    python -m transfer.train_net --config-file configs/transfer/coco_R_50_FPN_1x.yaml \\
        MODEL.WEIGHTS weights/fastsiam.pth OUTPUT_DIR runs/fastsiam/coco_R_50_FPN_1x
    python -m transfer.train_net --num-gpus 8 --config-file ... MODEL.WEIGHTS ... OUTPUT_DIR ...
    # less GPU memory: 2 images per GPU; lr and schedule follow the linear scaling rule (see scaling.json)
    python -m transfer.train_net --ims-per-gpu 2 --config-file ... MODEL.WEIGHTS ... OUTPUT_DIR ...
    # evaluate a trained model; resume an interrupted run
    python -m transfer.train_net --eval-only --config-file ... MODEL.WEIGHTS runs/.../model_final.pth
    python -m transfer.train_net --resume --config-file ... OUTPUT_DIR runs/.../coco_R_50_FPN_1x
    # every periodic checkpoint kept (detectron2's default; by default only the newest is, until the end)
    python -m transfer.train_net --keep-checkpoints 0 --config-file ...
    # your own COCO-format data (NUM_CLASSES and NUM_KEYPOINTS are taken from the training json)
    python -m transfer.train_net --config-file ... --dataset-train mine=ann/train.json:img/train \\
        --dataset-test mine_val=ann/val.json:img/val MODEL.WEIGHTS ...

detectron2's tools/train_net.py trimmed to the protocols, plus: start-up checks that fail in one line (exit
status 2) on a missing MODEL.WEIGHTS file, weights that do not fit the model (a backbone tensor left
uninitialised, a tensor of the file unused or wrong-shaped: transfer/weights.py; --allow-partial-weights
loads them anyway), an unknown dataset, missing dataset files, a malformed annotation file or a
missing/corrupt image; a warning for .pkl weights (plain pickle); a report of which checkpoint tensors were
loaded (OUTPUT_DIR/weights_report.json); OUTPUT_DIR/results.json after the final evaluation
(task -> metric -> value, as detectron2 reports them), because DefaultTrainer.train() returns nothing unless
expected results are set.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sys

from transfer import compat

compat.apply()  # before the first detectron2 import

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import (  # noqa: E402
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, hooks, launch  # noqa: E402
from detectron2.evaluation import CityscapesInstanceEvaluator, COCOEvaluator  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from transfer import annotations, data_checks, datasets, image_check, imagenet_weights, scaling  # noqa: E402
from transfer import roi_heads as _  # noqa: E402,F401  (registers Res5ROIHeadsExtraNorm)
from transfer import weights as weights_lib  # noqa: E402
from transfer.datasets import DatasetError  # noqa: E402
from transfer.weights import WeightsError  # noqa: E402

logger = logging.getLogger("transfer")
EVALUATOR_TYPES = ("coco", "cityscapes_instance")


class SetupError(Exception):
    """Bad command line or config; the message is one line meant for the user."""


# ---------------------------------------------------------------- evaluation and results
def build_evaluator(cfg, dataset_name: str, output_folder: str | None = None):
    """By the dataset's evaluator_type: COCO (bbox, + segm with masks, + keypoints), Cityscapes instances."""
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if kind == "coco":
        tasks = ["bbox"] + ["segm"] * cfg.MODEL.MASK_ON + ["keypoints"] * cfg.MODEL.KEYPOINT_ON
        # use_fast_impl: detectron2's compiled COCOeval, or faster-coco-eval without it (transfer.compat)
        return COCOEvaluator(dataset_name, tasks=tasks, distributed=True, output_dir=output_folder,
                             use_fast_impl=True, kpt_oks_sigmas=cfg.TEST.KEYPOINT_OKS_SIGMAS)
    if kind == "cityscapes_instance":
        return CityscapesInstanceEvaluator(dataset_name)  # cityscapesscripts: AP and AP50 of the masks
    raise SetupError(f"dataset {dataset_name!r} has evaluator_type {kind!r}; "
                     f"supported: {', '.join(EVALUATOR_TYPES)}")


def _finite(obj):
    """Results with NaN/inf (e.g. the AP of a category absent from the test set) as null: strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    v = float(obj)
    return v if math.isfinite(v) else None


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)  # never a half-written file


def write_results(cfg, results) -> None:
    if comm.is_main_process() and results:
        write_json(os.path.join(cfg.OUTPUT_DIR, "results.json"), _finite(results))
        logger.info(f"wrote {os.path.join(cfg.OUTPUT_DIR, 'results.json')}")


# ---------------------------------------------------------------- weights
def load_weights(model, weights: str, output_dir: str, allow_partial: bool = False) -> dict:
    """Load MODEL.WEIGHTS into ``model`` (no optimizer state) and write OUTPUT_DIR/weights_report.json.

    transfer.weights reads and matches the file as detectron2 does, with public functions only, and refuses
    (WeightsError) a file that leaves a backbone tensor uninitialised or has tensors the model does not use,
    unless ``allow_partial``. ``model`` may be a checkpointer (its ``.model`` is used) or DDP-wrapped."""
    model = getattr(model, "model", model)  # a DetectionCheckpointer holds the unwrapped model
    model = getattr(model, "module", model)  # DistributedDataParallel
    report_writer = write_json if comm.is_main_process() else None
    return weights_lib.load(model, weights, output_dir, allow_partial, write_report=report_writer)


def model_shapes(cfg) -> dict:
    """{key: shape} of the model the config builds, built on the meta device (no memory, no init time)."""
    meta = cfg.clone()
    meta.defrost()
    meta.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = build_model(meta)
    return {k: v.shape for k, v in model.state_dict().items()}


def check_weights(cfg, resume: bool, allow_partial: bool = False) -> None:
    """Refuse, before anything is written, MODEL.WEIGHTS that is missing or does not fit the model."""
    weights = cfg.MODEL.WEIGHTS
    if resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return  # resuming: the run's own last checkpoint is loaded, not MODEL.WEIGHTS
    if not weights:
        return  # random init
    if "://" not in weights and not os.path.isfile(weights):  # a URL is downloaded by PathManager
        raise SetupError(f"MODEL.WEIGHTS {weights!r} is not a file: convert a checkpoint with "
                         "`python -m transfer.convert CKPT OUT.pth` and pass MODEL.WEIGHTS OUT.pth "
                         "(or use the config's _random variant for random init)")
    if weights.endswith(".pkl"):
        print(f"warning: MODEL.WEIGHTS {weights} is a .pkl, which detectron2 reads with plain pickle (it "
              "can run code from the file); prefer .pth from `python -m transfer.convert CKPT OUT.pth`, "
              "which loads with torch's weights_only loader", file=sys.stderr)
    ckpt, _, _ = weights_lib.check(model_shapes(cfg), weights, allow_partial)
    check_input_conventions(cfg, weights, caffe2=ckpt["__author__"] == "Caffe2")


def check_input_conventions(cfg, weights: str, caffe2: bool) -> None:
    """Caffe2 weights (MSRA's ImageNet R-50.pkl) were trained on BGR images, Caffe's pixel mean, std 1 and the
    stride in the 1x1 conv; everything transfer.convert writes (FastSiam, SimSiam, MoCo, torchvision) on RGB
    images with torchvision's mean and std. The wrong config loads the weights without a warning and
    fine-tunes on inputs the backbone never saw, so refuse either mismatch (configs/transfer/msra/ holds the
    MSRA twins)."""
    msra = imagenet_weights.MSRA_INPUT
    have = {"INPUT.FORMAT": cfg.INPUT.FORMAT, "MODEL.PIXEL_MEAN": list(cfg.MODEL.PIXEL_MEAN),
            "MODEL.PIXEL_STD": list(cfg.MODEL.PIXEL_STD),
            "MODEL.RESNETS.STRIDE_IN_1X1": cfg.MODEL.RESNETS.STRIDE_IN_1X1}

    def same(a, b) -> bool:
        if isinstance(a, list):
            return len(a) == len(b) and all(abs(x - y) < 1e-3 for x, y in zip(a, b))
        return a == b

    wrong = [k for k, v in msra.items() if not same(v, have[k])]
    if caffe2 and wrong:
        raise SetupError(f"MODEL.WEIGHTS {weights} is a Caffe2 (MSRA) file, whose ResNet expects "
                         + ", ".join(f"{k} {msra[k]}" for k in wrong) + "; this config has "
                         + ", ".join(f"{have[k]}" for k in wrong)
                         + ": use the config's twin in configs/transfer/msra/")
    if not caffe2 and not wrong:
        raise SetupError(f"MODEL.WEIGHTS {weights} is not a Caffe2 (MSRA) file, but the config sets MSRA's "
                         "input conventions (BGR, Caffe pixel mean, std 1, STRIDE_IN_1X1 True): use the "
                         "protocol config in configs/transfer/, not its msra/ twin")


# ---------------------------------------------------------------- trainer
class Trainer(DefaultTrainer):
    """DefaultTrainer with our evaluators, data loaders that report bad images, checked weights and their
    report."""

    def __init__(self, cfg, allow_partial_weights: bool = False, keep_checkpoints: int = 1):
        self.allow_partial_weights = allow_partial_weights
        self.keep_checkpoints = keep_checkpoints
        self.eval_results = None  # the last evaluation's results (set by the evaluation hook)
        super().__init__(cfg)

    def build_hooks(self):
        """DefaultTrainer's hooks, with its evaluation hook replaced by one that keeps the results in
        self.eval_results (DefaultTrainer keeps them only in a private attribute), and its checkpointer by
        one that keeps the newest `keep_checkpoints` periodic checkpoints (0: all, detectron2's default).
        A periodic checkpoint holds the optimizer too: about 330 MB for R50-FPN, 18 of them in a 1x run."""
        ret = super().build_hooks()
        at = [i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook)]
        assert len(at) == 1, "DefaultTrainer.build_hooks changed: expected one EvalHook"
        ret[at[0]] = hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self.evaluate)
        if self.keep_checkpoints:
            ret = [hooks.PeriodicCheckpointer(self.checkpointer, self.cfg.SOLVER.CHECKPOINT_PERIOD,
                                              max_to_keep=self.keep_checkpoints)
                   if isinstance(h, hooks.PeriodicCheckpointer) else h for h in ret]
        return ret

    def remove_periodic_checkpoints(self) -> list[str]:
        """After a finished run: the periodic checkpoints (model_0001999.pth, ...) go, model_final.pth stays
        and is what last_checkpoint names, so --resume and --eval-only still find the trained model."""
        if not self.keep_checkpoints or not comm.is_main_process():
            return []
        out = self.cfg.OUTPUT_DIR
        last = os.path.join(out, "last_checkpoint")
        if not os.path.isfile(last) or open(last).read().strip() != "model_final.pth":
            return []  # not finished by the checkpointer (e.g. MAX_ITER 0): leave everything
        gone = sorted(f for f in os.listdir(out) if re.fullmatch(r"model_\d{7}\.pth", f))
        for f in gone:
            os.remove(os.path.join(out, f))
        return gone

    def evaluate(self):
        self.eval_results = self.test(self.cfg, self.model)
        return self.eval_results

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=datasets.CheckedMapper(DatasetMapper(cfg, True)))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name,
                                           mapper=datasets.CheckedMapper(DatasetMapper(cfg, False)))

    def resume_or_load(self, resume=True):
        if (resume and self.checkpointer.has_checkpoint()) or not self.cfg.MODEL.WEIGHTS:
            return super().resume_or_load(resume)
        load_weights(self.checkpointer.model, self.cfg.MODEL.WEIGHTS, self.cfg.OUTPUT_DIR,
                     self.allow_partial_weights)


class _HideDatasetErrorTraceback(logging.Filter):
    """detectron2's train loop logs every exception with its traceback before re-raising it; a DatasetError is
    bad input that main() reports in one line."""

    def filter(self, record):
        return not (record.exc_info and isinstance(record.exc_info[1], DatasetError))


# ---------------------------------------------------------------- setup and main
def argument_parser():
    parser = default_argument_parser(epilog=__doc__)
    parser.add_argument("--ims-per-gpu", type=int, default=0, metavar="N",
                        help="images per GPU; rescales batch, lr and every iteration count of the config "
                             "by the linear scaling rule and records the changes in OUTPUT_DIR/scaling.json")
    parser.add_argument("--keep-checkpoints", type=int, default=1, metavar="N",
                        help="periodic checkpoints kept while training, the newest N (resume needs one); "
                             "removed when the run has finished, model_final.pth stays. 0: keep all")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="MODEL.DEVICE; auto = cuda when a GPU is present, else cpu")
    parser.add_argument("--dataset-train", action="append", default=[], metavar="NAME=JSON:IMAGE_DIR",
                        help="register a COCO-format dataset and train on it (repeat for several)")
    parser.add_argument("--dataset-test", action="append", default=[], metavar="NAME=JSON:IMAGE_DIR",
                        help="register a COCO-format dataset and evaluate on it (repeat for several)")
    parser.add_argument(weights_lib.PARTIAL_FLAG, action="store_true",
                        help="load MODEL.WEIGHTS even when backbone tensors stay uninitialised or tensors of "
                             "the file are unused or wrong-shaped (recorded in weights_report.json); "
                             "without it such weights are an error")
    return parser


def inspect_user_datasets(cfg, train_specs: list[str], test_specs: list[str]) -> list[datasets.Summary]:
    """--dataset-train/--dataset-test NAME=JSON:IMAGE_DIR: read and check each file (not registered yet), use
    them, and size the heads to the data (classes and keypoints of the first training json, else of the first
    test json)."""
    found = []
    for specs, key in ((train_specs, "TRAIN"), (test_specs, "TEST")):
        names = []
        for spec in specs:
            name, json_file, image_dir = datasets.parse_spec(spec)
            if name in names or any(s.name == name for s in found):
                raise DatasetError(f"dataset name {name!r} is given twice; give each file its own NAME")
            found.append(datasets.inspect_coco_json(name, json_file, image_dir)[0])
            names.append(name)
        if names:
            cfg.DATASETS[key] = tuple(names)
    if found:
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(found[0].categories)
        if found[0].keypoint_names:
            cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = len(found[0].keypoint_names)
    return found


def register_user_datasets(cfg, user: list[datasets.Summary], in_use: set[str]) -> None:
    """Register the user's datasets with detectron2. A file that lacks fields COCOeval reads (area, iscrowd,
    num_keypoints) is registered through a completed copy in OUTPUT_DIR/datasets/, written by the main
    process (annotations.complete: nothing else changes; provenance.json keeps the user's file and sha256)."""
    for s in user:
        path = None
        if s.completed and s.name in in_use:
            path = os.path.join(cfg.OUTPUT_DIR, "datasets", f"{s.name}.json")
            if comm.is_main_process():
                os.makedirs(os.path.dirname(path), exist_ok=True)
                write_json(path, annotations.complete(annotations.read(s.json_file)[0]))
        datasets.register(s, path)
    comm.synchronize()


def check_data(cfg, user: list[datasets.Summary], eval_only: bool):
    """Every dataset of the run (only the test sets with --eval-only), before anything is written: registered
    or given, files present, images as the json says (user files), classes, masks and keypoints as the config
    needs. Returns (train summaries, test summaries, mask format)."""
    given = {s.name: s for s in user}
    train_names = () if eval_only else cfg.DATASETS.TRAIN
    for name in train_names + cfg.DATASETS.TEST:
        if name in given:
            image_check.check_images(given[name], progress=comm.is_main_process())
        else:
            datasets.check_dataset(name)
    train = [given.get(n) or datasets.summary(n) for n in train_names]
    test = [given.get(n) or datasets.summary(n) for n in cfg.DATASETS.TEST]
    if not train and not test:
        raise SetupError("no datasets: DATASETS.TRAIN and DATASETS.TEST are empty")
    mask_format = data_checks.check_run(cfg, train, test)
    for name in cfg.DATASETS.TEST:  # a test set we cannot evaluate fails now, not after training
        kind = "coco" if name in given else MetadataCatalog.get(name).get("evaluator_type")
        if kind not in EVALUATOR_TYPES:
            raise SetupError(f"dataset {name!r} has evaluator_type {kind!r}; "
                             f"supported: {', '.join(EVALUATOR_TYPES)}")
    return train, test, mask_format


def write_provenance(cfg, train, test, mask_format: str) -> None:
    """OUTPUT_DIR/provenance.json: the data of this run (names, files, sha256, image and class counts)."""
    if not comm.is_main_process():
        return
    for s in train + test:  # builtin splits: counted when loaded, hashed here
        if s.images is None:
            s.images = datasets.LOADED.get(s.name)
        if s.sha256 is None and s.json_file and os.path.isfile(s.json_file):
            with open(s.json_file, "rb") as f:
                s.sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    write_json(os.path.join(cfg.OUTPUT_DIR, "provenance.json"),
               data_checks.provenance(train, test, mask_format))


def setup(args):
    """Config, user datasets and every start-up check; raises SetupError/DatasetError before any work.
    Returns (cfg, (train summaries, test summaries, mask format))."""
    cfg = get_cfg()
    if not os.path.isfile(args.config_file):
        raise SetupError(f"--config-file {args.config_file!r} is not a file")
    try:
        cfg.merge_from_file(args.config_file)
    except Exception as e:  # yaml syntax, unknown keys, wrong types: yacs/yaml raise many types
        raise SetupError(f"config {args.config_file}: {type(e).__name__}: {datasets.one_line(e)}") \
            from None

    user = inspect_user_datasets(cfg, args.dataset_train, args.dataset_test)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SetupError("--device cuda, but torch sees no GPU")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    cfg.MODEL.DEVICE = "cuda" if use_cuda else "cpu"
    options = [o for o in args.opts[::2] if o.startswith("--")]
    if options:  # argparse hands everything after the first KEY to the overrides
        raise SetupError(f"{options[0]} comes after KEY VALUE overrides: options go before the KEY VALUE "
                         "overrides")
    try:
        cfg.merge_from_list(args.opts)  # the command line wins over all of the above
    except Exception as e:
        raise SetupError(f"command-line overrides: {type(e).__name__}: {datasets.one_line(e)}") from None

    record = None
    if args.ims_per_gpu < 0:
        raise SetupError(f"--ims-per-gpu must be positive, got {args.ims_per_gpu}")
    if args.ims_per_gpu:
        if cfg.SOLVER.REFERENCE_WORLD_SIZE:
            raise SetupError("--ims-per-gpu and SOLVER.REFERENCE_WORLD_SIZE both rescale the schedule; "
                             "use one")
        record = scaling.scale_schedule(cfg, args.ims_per_gpu, comm.get_world_size())

    check_weights(cfg, args.resume, args.allow_partial_weights)
    train, test, mask_format = check_data(cfg, user, args.eval_only)
    if cfg.MODEL.KEYPOINT_ON and cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS != 17 and \
            len(cfg.TEST.KEYPOINT_OKS_SIGMAS) != cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS:
        raise SetupError("keypoints other than COCO's 17 need TEST.KEYPOINT_OKS_SIGMAS (one per keypoint) "
                         "for COCO's keypoint AP")
    if mask_format != cfg.INPUT.MASK_FORMAT:
        rle = sum(s.rle for s in train)
        print(f"note: INPUT.MASK_FORMAT {mask_format}: {rle} training objects have RLE masks, which "
              "detectron2's polygon format cannot hold", file=sys.stderr)
        cfg.INPUT.MASK_FORMAT = mask_format
    cfg.freeze()

    register_user_datasets(cfg, user, {s.name for s in train + test})
    for s in user:
        datasets.check_dataset(s.name)
    for name in cfg.DATASETS.TEST:  # loaded now: a file detectron2's loader rejects fails before training
        DatasetCatalog.get(name)
    for s in train + test:
        for w in s.warnings:
            print(f"warning: dataset {s.name!r} ({s.source}): {w}", file=sys.stderr)

    default_setup(cfg, args)  # logging, OUTPUT_DIR/config.yaml, seed
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="transfer")
    logging.getLogger("detectron2.engine.train_loop").addFilter(_HideDatasetErrorTraceback())
    if record is not None and comm.is_main_process():
        write_json(os.path.join(cfg.OUTPUT_DIR, "scaling.json"), record)
        logger.info(f"--ims-per-gpu {args.ims_per_gpu}: linear scaling x{record['factor']:g}: " +
                    ", ".join(f"{k} {a} -> {b}" for k, (a, b) in record["changed"].items()))
    return cfg, (train, test, mask_format)


def main(args):
    try:
        cfg, data = setup(args)
        if args.eval_only:
            model = Trainer.build_model(cfg)
            checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
            if args.resume and checkpointer.has_checkpoint():
                checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=True)
            elif cfg.MODEL.WEIGHTS:
                load_weights(model, cfg.MODEL.WEIGHTS, cfg.OUTPUT_DIR, args.allow_partial_weights)
            write_provenance(cfg, *data)
            results = Trainer.test(cfg, model)
        else:
            trainer = Trainer(cfg, allow_partial_weights=args.allow_partial_weights,
                              keep_checkpoints=args.keep_checkpoints)
            write_provenance(cfg, *data)  # after the train loader counted the builtin split's images
            trainer.resume_or_load(resume=args.resume)
            trainer.train()  # returns the results only with TEST.EXPECTED_RESULTS set
            results = trainer.eval_results
        write_results(cfg, results)
        if not args.eval_only:
            trainer.remove_periodic_checkpoints()  # after results.json: a cut-off run keeps its resume point
        return results
    except (SetupError, DatasetError, WeightsError) as e:
        line = datasets.one_line(e)
        if isinstance(e, DatasetError) and "README" not in line:  # every data error names its README section
            line += f" ({datasets.README_OWN_DATA})"
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)


def cli(argv=None) -> None:
    args = argument_parser().parse_args(argv)
    world_size = args.num_gpus * args.num_machines
    if world_size > 1 and (args.device == "cpu" or torch.cuda.device_count() < args.num_gpus):
        print(f"error: --num-gpus {args.num_gpus} needs {args.num_gpus} GPUs; torch sees "
              f"{torch.cuda.device_count()}", file=sys.stderr)
        sys.exit(2)
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except torch.multiprocessing.ProcessExitedException as e:  # a worker printed its one-line error
        sys.exit(e.exit_code)


if __name__ == "__main__":
    cli()
