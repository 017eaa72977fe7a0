"""The built wheel ships the whole package: every module and subpackage of the source tree,
the configs and the embedded data sample (what `pip install .` gives a user)."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "siriib_jax")
# Paths of a checkout that are not sources: the build copies everything else.
_NOT_SOURCES = shutil.ignore_patterns(".git", "venv", ".venv", "build", "dist", "*.egg-info",
                                      "workdir*", ".gpu_data", ".whl", "__pycache__",
                                      ".pytest_cache", "*.pyc")


def source_files(package_dir: str = PACKAGE) -> set[str]:
  """Paths, relative to the package's parent, of every file of the package in the source
  tree (links to folders followed: `siriib_jax/configs` is a link to `configs/`)."""
  found = set()
  for root, dirs, files in os.walk(package_dir, followlinks=True):
    dirs[:] = [d for d in dirs if d != "__pycache__"]
    for name in files:
      if not name.endswith(".pyc"):
        path = os.path.join(root, name)
        found.add(os.path.relpath(path, os.path.dirname(package_dir)).replace(os.sep, "/"))
  return found


def wheel_files(wheel: str) -> set[str]:
  """The package's paths in a wheel, without the `.dist-info` metadata."""
  with zipfile.ZipFile(wheel) as archive:
    return {name for name in archive.namelist()
            if not name.split("/", 1)[0].endswith(".dist-info") and not name.endswith("/")}


def build_wheel(source: str, out: str) -> str:
  """Builds the wheel of a copy of `source` (so no `build/` lands in the checkout) into `out`
  with pip, as `pip install .` would; returns its path."""
  tree = os.path.join(out, "src")
  shutil.copytree(source, tree, ignore=_NOT_SOURCES, symlinks=True)
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                  "--no-build-isolation", "--wheel-dir", out, tree],
                 check=True, capture_output=True, text=True)
  wheels = [name for name in os.listdir(out) if name.endswith(".whl")]
  assert len(wheels) == 1, wheels
  return os.path.join(out, wheels[0])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  return build_wheel(ROOT, str(tmp_path_factory.mktemp("wheel")))


def test_wheel_ships_every_file_of_the_source_package(wheel):
  missing = source_files() - wheel_files(wheel)
  assert not missing, f"in the source tree but not in the wheel: {sorted(missing)}"


def test_wheel_ships_configs_and_data_sample(wheel):
  shipped = wheel_files(wheel)
  assert "siriib_jax/configs/quickstart.py" in shipped
  assert "siriib_jax/configs/cifar10_r18.py" in shipped
  assert any(name.startswith("siriib_jax/data/sample/") for name in shipped)


def test_a_new_subpackage_is_shipped_without_editing_pyproject(tmp_path):
  # The drift that broke `pip install .`: a folder added after the package list was written.
  tree = tmp_path / "tree"
  shutil.copytree(ROOT, tree, ignore=_NOT_SOURCES, symlinks=True)
  new = tree / "siriib_jax" / "brand_new_room"
  new.mkdir()
  (new / "__init__.py").write_text('"""A subpackage added after pyproject.toml."""\n')
  (new / "module.py").write_text("VALUE = 1\n")
  shipped = wheel_files(build_wheel(str(tree), str(tmp_path / "out")))
  assert {"siriib_jax/brand_new_room/__init__.py",
          "siriib_jax/brand_new_room/module.py"} <= shipped
