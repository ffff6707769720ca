"""Run ``worker.py`` under ``torchrun --standalone`` (its own free loopback port) and load rank 0's results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def torchrun(nproc: int, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc-per-node nproc ARGS`` (captured, text)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def run_workers(tmp_path: Path, nproc: int, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every run of ``runs`` on ``nproc`` ranks (one launch); rank 0's results, one per run."""
    spec, result = tmp_path / "spec.json", tmp_path / "result.pt"
    spec.write_text(json.dumps({"runs": runs, "result": str(result)}))
    proc = torchrun(nproc, str(Path(__file__).with_name("worker.py")), str(spec))
    assert proc.returncode == 0 and result.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(result, weights_only=True)  # tensors, numbers and strings only


def max_diff(outs: list[torch.Tensor], reference: torch.Tensor) -> float:
    """Largest difference of any rank's output from the single-process one; every rank's must be identical."""
    for out in outs[1:]:
        assert torch.equal(out, outs[0]), "ranks ended with different results"
    return float((outs[0] - reference).abs().max())
