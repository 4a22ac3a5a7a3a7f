"""scripts/gpu-checks.sh, the one call a lent GPU machine gets: its stages run in the order asked
for, and a bad stage name or budget is refused before anything runs."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu-checks.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_script(tmp_path, stages, budget="30"):
    env = {**os.environ, "STAGES": stages, "DEVICE": "cpu", "RESULTS": str(tmp_path / "results")}
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return subprocess.run(["bash", str(SCRIPT), str(tmp_path), str(out), budget], env=env,
                          capture_output=True, text=True, timeout=120)


def test_stages_run_in_the_order_given(tmp_path):
    # a 30 s budget leaves every stage under its 20 s minimum: each is announced as skipped, in order
    result = run_script(tmp_path, "passes paper tests chunks")
    assert result.returncode == 0, result.stderr
    announced = [line.split(":")[0].removeprefix("== ") for line in result.stdout.splitlines()
                 if line.startswith("== ") and "skipped" in line]
    assert announced == ["passes", "paper", "tests", "chunks"]
    assert (tmp_path / "out" / "results.tar.00").is_file()  # packed after every stage


@pytest.mark.parametrize("stages,budget,message", [("paper bogus", "30", "unknown stage 'bogus'"),
                                                   ("paper", "ten", "whole number of seconds")])
def test_bad_stage_or_budget_is_refused(tmp_path, stages, budget, message):
    result = run_script(tmp_path, stages, budget)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "results").exists()  # refused before anything ran
