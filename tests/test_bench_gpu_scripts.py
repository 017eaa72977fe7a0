"""The GPU scripts (`bench/gpu_autoattack.py`, `bench/gpu_reproduce.py`) run end to end at
toy size on the CPU: a GPU call that fails at its first step costs a task's only device
time. Slow (about 3 minutes); needs torch, pyautoattack and ../shared/data."""

import pathlib
import subprocess
import sys

import pytest

from tests.data_helpers import SHARED_DATA

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
  """The packed CIFAR-10 both scripts read (`cifar.py pack`), written once."""
  pytest.importorskip("torch")
  pytest.importorskip("pyautoattack")
  if not (SHARED_DATA / "cifar.py").exists():
    pytest.skip("needs ../shared/data")
  folder = tmp_path_factory.mktemp("gpu") / "data"
  subprocess.run([sys.executable, str(SHARED_DATA / "cifar.py"), "pack", str(folder)],
                 check=True, capture_output=True)
  return folder


@pytest.mark.slow
@pytest.mark.parametrize("script", ["gpu_autoattack.py", "gpu_reproduce.py"])
def test_the_gpu_script_runs_at_toy_size(script, packed, tmp_path):
  run = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--data", str(packed),
                        "--out", str(tmp_path / "out"), "--toy"],
                       capture_output=True, text=True, cwd=ROOT, timeout=900)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
