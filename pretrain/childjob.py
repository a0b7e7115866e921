"""A submitit job that runs one command as a child process, with torchrun's variables, stopped cleanly on
Slurm's time-limit and preemption signals and requeued.

A module of its own, not part of pretrain/submit.py (pretraining's command line), because two launchers
use it: pretrain/submit.py (PretrainJob) and tools/launch/slurm.py (the transfer cells' CellJob). Both import
it from here, so neither depends on the other's command line. It needs submitit only when a job runs.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
import zlib

STOP_WAIT_S = 60  # time the child gets to write its checkpoint; submitit's signal comes 90 s before the kill


def master_port(job_id: str) -> int:
    """A port every task of a job derives alike from the job id (as submitit's TorchDistributedEnvironment
    does, with crc32 instead of Python's random), so concurrent jobs on one node rarely collide."""
    return 20000 + zlib.crc32(str(job_id).encode()) % 40000


def torch_env(job_env) -> dict[str, str]:
    """The variables torchrun sets for one process, from a submitit JobEnvironment (one task per GPU): global
    rank = Slurm's task id, local rank = its index on the node, rendezvous on the job's first node."""
    return {"RANK": str(job_env.global_rank), "LOCAL_RANK": str(job_env.local_rank),
            "WORLD_SIZE": str(job_env.num_tasks),
            "LOCAL_WORLD_SIZE": str(job_env.num_tasks // job_env.num_nodes),
            "MASTER_ADDR": job_env.hostnames[0], "MASTER_PORT": str(master_port(job_env.job_id))}


def _ignore_preemption_signal() -> None:
    """In the child before exec: Slurm signals every process of the job step; only the submitit task must
    act on it (by stopping its child cleanly), not the child itself, whose default action is to die."""
    import submitit

    signal.signal(getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG), signal.SIG_IGN)


class ChildJob:
    """A submitit callable that runs a command as a child process and is requeued when Slurm stops the job.

    submitit calls checkpoint() on global rank 0 when the time limit or a preemption is announced; it returns
    the job to requeue. Subclasses choose the command and environment per task (command(), environment()) and
    what counts as done (check_done())."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None):
        self.cmd, self.env = list(cmd), dict(env or {})
        self._proc: subprocess.Popen | None = None

    def command(self, job_env) -> list[str]:
        return self.cmd

    def environment(self, job_env) -> dict[str, str]:
        return {}

    def check_done(self, job_env) -> None:
        """Raise if the child exited 0 without finishing its work."""

    def __call__(self) -> int:
        import submitit

        job_env = submitit.JobEnvironment()
        cmd = self.command(job_env)
        env = {**os.environ, **self.env, **self.environment(job_env)}
        print(f"{job_env}: {shlex.join(cmd)}", flush=True)
        self._proc = subprocess.Popen(cmd, env=env, preexec_fn=_ignore_preemption_signal)
        try:
            # poll, not wait(): a blocking Popen.wait() holds a lock that the signal handler's own wait would
            # need, and submitit calls checkpoint() from the handler while this loop runs
            while (rc := self._proc.poll()) is None:
                time.sleep(0.5)
        finally:  # SIGINT/SystemExit in this task must not leave the training running on its own
            self._stop_child()
        self._proc = None
        if rc != 0:
            raise RuntimeError(f"exit status {rc}: {shlex.join(cmd)}")
        self.check_done(job_env)
        return rc

    def _stop_child(self) -> None:
        """SIGTERM, then wait: the pretraining engine writes a checkpoint after the running iteration, exits.
        os.waitpid directly, as this may run inside a signal handler that interrupted Popen.poll()."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, STOP_WAIT_S), (signal.SIGKILL, 10)):
            try:
                os.kill(proc.pid, sig)
                deadline = time.monotonic() + wait_s
                while time.monotonic() < deadline:
                    pid, status = os.waitpid(proc.pid, os.WNOHANG)
                    if pid == proc.pid:  # reaped here: record it, so no later call signals a reused pid
                        proc.returncode = os.waitstatus_to_exitcode(status)
                        return
                    time.sleep(0.1)
            except (ProcessLookupError, ChildProcessError):  # already gone, or reaped by the interrupted poll
                return

    def checkpoint(self):
        import submitit

        print("time limit or preemption: stopping the child, then requeueing", flush=True)
        self._stop_child()
        return submitit.helpers.DelayedSubmission(self)  # command() is rebuilt when the requeued job starts

    def __getstate__(self):
        return {**self.__dict__, "_proc": None}  # a running process does not pickle
