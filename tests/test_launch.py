"""The console entry point: PyTorch's huge-page allocations on, unless the user said otherwise."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from finer import launch

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

FAULTS = """
import resource, torch
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(16 * 2**20); del x  # 64 MB
before = faults()
for _ in range(3):
    x = torch.ones(16 * 2**20); del x
print(faults() - before)
"""


def _page_faults(env) -> int:
    proc = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


@pytest.mark.skipif(not (THP.exists() and "[madvise]" in THP.read_text()),
                    reason="needs Linux transparent huge pages in madvise mode")
def test_the_variable_cuts_the_page_faults_of_large_tensors():
    """Fresh 64 MB tensors: 16k faults each in 4 KB pages, a few hundred in 2 MB pages."""
    env = {k: v for k, v in os.environ.items() if k != launch.THP_VARIABLE}
    assert _page_faults(env) > 3 * 10_000
    assert _page_faults({**env, launch.THP_VARIABLE: "1"}) < 3 * 2_000


def test_console_sets_the_variable_unless_set(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["finer", "models"])
    monkeypatch.delenv(launch.THP_VARIABLE, raising=False)
    with pytest.raises(SystemExit) as done:
        launch.console()
    assert done.value.code == 0 and launch.huge_pages_requested()
    monkeypatch.setenv(launch.THP_VARIABLE, "0")  # the user's choice stands
    with pytest.raises(SystemExit):
        launch.console()
    assert not launch.huge_pages_requested()


def test_python_dash_m_finer_runs_the_command():
    proc = subprocess.run([sys.executable, "-m", "finer", "models"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("finer ")
