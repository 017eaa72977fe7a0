"""The benchmarks (`bench/`, run by hand and not by the tests) import only what the package
has: a module moved or renamed breaks them at their first run otherwise."""

import ast
import importlib
import os

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def _package_imports():
  """[(file:line, module, name or None)] of every siriib_jax import in bench/*.py."""
  found = []
  for name in sorted(os.listdir(BENCH)):
    if not name.endswith(".py"):
      continue
    with open(os.path.join(BENCH, name), encoding="utf-8") as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      where = f"bench/{name}:{getattr(node, 'lineno', 0)}"
      if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "siriib_jax":
        found.extend((where, node.module, alias.name) for alias in node.names)
      elif isinstance(node, ast.Import):
        found.extend((where, alias.name, None) for alias in node.names
                     if alias.name.split(".")[0] == "siriib_jax")
  return found


def test_the_benchmarks_import_something_of_the_package():
  assert len(_package_imports()) > 20


@pytest.mark.parametrize("where, module, name", _package_imports())
def test_every_name_a_benchmark_imports_from_the_package_exists(where, module, name):
  imported = importlib.import_module(module)
  if name is not None and not hasattr(imported, name):
    importlib.import_module(f"{module}.{name}")  # A submodule: raises if there is none.
