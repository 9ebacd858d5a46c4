"""Kill a real ``peft-hybrid train`` process with SIGKILL and resume it: the crash-safety check.

Used by ``tests/training/test_resume_after_kill.py`` and ``bench/kill_resume.py``. Each run is a separate
Python process running the command line exactly as a user would (tiny preset, synthetic SAMSum
CSV files, dropout on, a checkpoint every few steps). The parent reads the per-step log lines
(``logging_steps=1``) from the child's stdout and sends SIGKILL once the wanted step is logged,
after an optional random delay, so a kill can also land while a checkpoint is being written.

Example:
    >>> from kill_resume_driver import KillResumeRun
    >>> run = KillResumeRun(tmp_path)  # doctest: +SKIP
    >>> reference = run.train("reference")  # doctest: +SKIP
    >>> run.train("chain", kill_at=9); run.train("chain", resume=True)  # doctest: +SKIP
    >>> run.differences("reference", "chain")  # doctest: +SKIP
    []
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from helpers import FIXED_STEPS, quick_run_args
from peft_hybrid.offline.synthetic import dialogue_summary_pairs, write_samsum_csv
from peft_hybrid.serialization import WEIGHTS_NAME

# The child is the installed ``peft-hybrid`` entry point, started through the current interpreter.
_ENTRY = "import sys; from peft_hybrid.cli import main; sys.exit(main())"


@dataclass
class KillResumeRun:
    """One training setup (data, seed, steps) run to the end, killed, or resumed in named folders.

    Args:
        workdir: where the data files and the run folders go.
        max_steps / save_steps / batch_size / train_examples: the run's length and checkpoints;
            ``train_examples // batch_size`` steps make an epoch, so kills also land in epoch 2.
        seed: the training seed (the same for every run, so runs are comparable).
        extra_args: more ``peft-hybrid train`` arguments.
    """

    workdir: Path
    max_steps: int = 24
    save_steps: int = 4
    batch_size: int = 4
    train_examples: int = 48
    eval_steps: int = 12
    seed: int = 7
    extra_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.train_file = write_samsum_csv(self.workdir / "train.csv", dialogue_summary_pairs(self.train_examples, 0))
        self.validation_file = write_samsum_csv(self.workdir / "validation.csv", dialogue_summary_pairs(2, 1))

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.train_examples // self.batch_size)

    def output_dir(self, name: str) -> Path:
        return self.workdir / name

    def command(self, name: str, resume: bool = False) -> list[str]:
        """The ``peft-hybrid train`` command line of run ``name``."""
        args = quick_run_args(
            "train",
            "--task",
            "samsum",
            disable_tqdm=True,
            seed=self.seed,
            train_file=self.train_file,
            validation_file=self.validation_file,
            max_source_length=64,
            max_target_length=24,
            per_device_train_batch_size=self.batch_size,
            per_device_eval_batch_size=2,
            max_steps=self.max_steps,
            warmup_steps=2,
            logging_steps=1,
            save_strategy="steps",
            save_steps=self.save_steps,
            save_total_limit=2,
            eval_strategy="steps",
            eval_steps=self.eval_steps,
            **FIXED_STEPS,
            output_dir=self.output_dir(name),
        )
        args += self.extra_args
        if resume:
            args += ["--resume_from_checkpoint", "latest"]
        return [sys.executable, "-c", _ENTRY, *args]

    def train(
        self,
        name: str,
        *,
        resume: bool = False,
        kill_at: int | None = None,
        delay: float = 0.0,
        timeout: float = 600.0,
    ) -> RunResult:
        """Run ``name`` to the end, or SIGKILL it ``delay`` seconds after step ``kill_at`` is logged."""
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
        log = self.workdir / f"{name}.stderr.log"
        started = time.perf_counter()
        with log.open("ab") as stderr:
            child = subprocess.Popen(
                self.command(name, resume), stdout=subprocess.PIPE, stderr=stderr, env=env, text=True
            )
            steps: list[int] = []
            killed = False
            deadline = started + timeout
            for line in child.stdout:
                step = self._logged_step(line)
                if step is not None:
                    steps.append(step)
                if kill_at is not None and step is not None and step >= kill_at:
                    time.sleep(delay)
                    child.send_signal(signal.SIGKILL)
                    killed = True
                    break
                if time.perf_counter() > deadline:
                    child.kill()
                    raise TimeoutError(f"{name}: still running after {timeout:.0f} s; see {log}")
            child.stdout.close()
            returncode = child.wait()
        return RunResult(name, returncode, killed, steps, time.perf_counter() - started, log)

    def _logged_step(self, line: str) -> int | None:
        """The global step of a per-step training log line (``{'loss': ..., 'epoch': ...}``), else None."""
        line = line.strip()
        if not (line.startswith("{") and "'loss'" in line and "'epoch'" in line):
            return None
        try:
            record = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            return None
        return round(float(record["epoch"]) * self.steps_per_epoch)

    def checkpoints(self, name: str) -> list[str]:
        folder = self.output_dir(name)
        return sorted((p.name for p in folder.glob("checkpoint-*") if p.is_dir()), key=lambda n: int(n.split("-")[1]))

    def differences(self, reference: str, other: str) -> list[str]:
        """Tensors (and files) in which run ``other``'s final adapter and shared checkpoints differ."""
        problems = []
        folders = [""] + [c for c in self.checkpoints(reference) if c in self.checkpoints(other)]
        for sub in folders:
            a = self.output_dir(reference) / sub / WEIGHTS_NAME
            b = self.output_dir(other) / sub / WEIGHTS_NAME
            if not b.is_file():
                problems.append(f"{b} is missing")
                continue
            left, right = load_file(a), load_file(b)
            if set(left) != set(right):
                problems.append(f"{sub or 'final'}: keys differ")
                continue
            problems += [f"{sub or 'final'}: {key}" for key in sorted(left) if not torch.equal(left[key], right[key])]
        return problems


@dataclass
class RunResult:
    """What one process did: exit code (-9 when killed), the steps it logged, wall time, stderr log."""

    name: str
    returncode: int
    killed: bool
    steps: list[int]
    seconds: float
    log: Path

    @property
    def last_step(self) -> int | None:
        return self.steps[-1] if self.steps else None

    def check_finished(self) -> None:
        """Raise with the tail of the child's stderr unless it exited 0."""
        if self.returncode != 0:
            tail = self.log.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise AssertionError(f"{self.name} exited {self.returncode}:\n{tail}")
