"""A Slurm request checked against its partition before submission, from `sinfo`.

sbatch accepts a job that asks for more CPUs, memory or time than any machine of the partition has; the job
then stays PENDING for ever (Reason=PartitionConfig) and nothing says why. The request is refused here
instead, in one line naming the limit. Memory is always requested explicitly: a job without --mem on a cluster
with CR_Core_Memory and no DefMemPerCPU takes the whole machine.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

MEM_PER_CPU_MB = 4096  # default memory per requested CPU: data-loader workers decode and augment images


class RequestError(Exception):
    """A request that can never start, or a partition sinfo does not know."""


@dataclass
class Partition:
    name: str
    cpus: int  # per machine (the largest)
    mem_mb: int  # per machine (the largest)
    gpus: int  # GPUs per machine (the largest), 0 without GRES
    time_min: int | None  # None: unlimited
    nodes: int


def parse_mem_mb(text: str) -> int:
    """sbatch's memory syntax (4000, 4000M, 16G, 1T; no suffix means MB) in MB."""
    m = re.fullmatch(r"(\d+)([KMGT]?)B?", text.strip().upper())
    if m is None:
        raise ValueError(f"bad memory size {text!r}: expected e.g. 16G or 4000M")
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2)]
    return int(int(m.group(1)) * scale)


def parse_time_min(text: str) -> int | None:
    """sinfo's time limit ([days-]hours:minutes:seconds, minutes:seconds, UNLIMITED) in minutes."""
    if text.strip().lower() in ("unlimited", "infinite", "n/a"):
        return None
    days, _, rest = text.strip().rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    h, m, s = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return (int(days or 0) * 24 + h) * 60 + m + (1 if s else 0)


def _gpus(gres: str) -> int:
    """gpu:8, gpu:a100:4(S:0-1), gpu:a100:4,gpu:v100:2 -> the GPU count."""
    total = 0
    for item in gres.split(","):
        fields = re.sub(r"\(.*?\)", "", item).split(":")
        if fields[0] == "gpu" and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def partitions() -> dict[str, Partition]:
    """Every partition sinfo lists; the default one also under the key "" (sinfo marks it with *)."""
    try:
        r = subprocess.run(["sinfo", "--noheader", "--format=%P|%c|%m|%G|%l|%D"], capture_output=True,
                           text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RequestError(f"sinfo did not answer ({e}): is this a Slurm login node?") from e
    if r.returncode != 0:
        raise RequestError(f"sinfo did not answer: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    found: dict[str, Partition] = {}
    for line in r.stdout.splitlines():
        fields = line.split("|")
        if len(fields) != 6:
            continue
        name, cpus, mem, gres, limit, nodes = fields
        default = name.endswith("*")
        name = name.rstrip("*")
        row = Partition(name, int(cpus.rstrip("+")), int(mem.rstrip("+")), _gpus(gres), parse_time_min(limit),
                        int(nodes))
        old = found.get(name)
        if old is not None:  # one row per kind of machine: the request must fit the largest
            row = Partition(name, max(old.cpus, row.cpus), max(old.mem_mb, row.mem_mb),
                            max(old.gpus, row.gpus), old.time_min, old.nodes + row.nodes)
        found[name] = row
        if default:
            found[""] = row
    return found


def check(res, default_mem_mb: int | None) -> int | None:
    """Raise RequestError if `res` (pretrain.submit.Resources) can never start in its partition. Returns the
    default memory per machine, capped at the partition's machines (None if the request names its memory)."""
    parts = partitions()
    part = parts.get(res.partition or "")
    if part is None:
        known = ", ".join(sorted(p for p in parts if p)) or "none"
        what = f"partition {res.partition!r} does not exist" if res.partition else "no default partition"
        raise RequestError(f"{what} (sinfo lists: {known}); choose one with --partition")
    cpus = res.cpus_per_task * res.tasks_per_node
    if cpus > part.cpus:
        raise RequestError(
            f"{res.tasks_per_node} task(s) x {res.cpus_per_task} CPUs = {cpus} CPUs per machine, but "
            f"partition {part.name}'s machines have {part.cpus}: lower --cpus-per-task")
    if res.gpus_per_node > part.gpus:
        raise RequestError(f"{res.gpus_per_node} GPUs per machine, but partition {part.name}'s machines have "
                           f"{part.gpus or 'no GPUs (no gpu GRES)'}: lower --gpus-per-node")
    if res.nodes > part.nodes:
        raise RequestError(f"{res.nodes} machines, but partition {part.name} has {part.nodes}: lower --nodes")
    if part.time_min is not None and res.timeout_min > part.time_min:
        raise RequestError(f"--timeout-min {res.timeout_min}, but partition {part.name}'s time limit is "
                           f"{part.time_min} min: lower --timeout-min (jobs are requeued at the limit)")
    mem_mb = None
    if res.mem is not None:
        mem_mb = parse_mem_mb(res.mem)
    elif res.mem_per_gpu is not None:
        mem_mb = parse_mem_mb(res.mem_per_gpu) * res.gpus_per_node
    if mem_mb is not None and mem_mb > part.mem_mb:
        raise RequestError(f"{mem_mb} MB of memory per machine, but partition {part.name}'s machines have "
                           f"{part.mem_mb} MB: lower --mem or --mem-per-gpu")
    if mem_mb is None and default_mem_mb is not None:
        return min(default_mem_mb, part.mem_mb)
    return None
