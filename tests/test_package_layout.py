"""The package's import graph: library folders never import an entry point, each command's
library is imported only by its command, and no two parts of the package import each other
(directly or through others)."""

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "siriib_jax")
# Folders that are libraries, and the modules that are entry points above them.
LIBRARY_FOLDERS = ("analysis", "attacks", "data", "evaluation", "models", "training")
ENTRY_POINTS = ("siriib_jax.train", "siriib_jax.evaluate", "siriib_jax.config_validation",
                "siriib_jax.export", "siriib_jax.paper", "siriib_jax.cli")
# A command's own library: imported by the command and by the library itself only.
COMMAND_LIBRARIES = {"siriib_jax.training": ("siriib_jax.train",)}


def _imports():
  """{module path: set of imported siriib_jax / configs module names}."""
  graph = {}
  for folder, _, files in os.walk(ROOT):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(folder, name)
      with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
      names = set()
      for node in ast.walk(tree):
        if isinstance(node, ast.Import):
          names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
          names.add(node.module)
          names.update(f"{node.module}.{alias.name}" for alias in node.names)
      graph[os.path.relpath(path, os.path.dirname(ROOT))] = {
          n for n in names if n.split(".")[0] in ("siriib_jax", "configs")}
  return graph


def _unit(name: str) -> str:
  """The part of the package a module belongs to: `siriib_jax.<folder or module>`."""
  parts = name.replace(os.sep, ".").removesuffix(".py").split(".")
  return ".".join(parts[:2])


def test_library_folders_import_no_entry_point_and_no_config():
  for path, names in _imports().items():
    if path.split(os.sep)[1] in LIBRARY_FOLDERS:
      bad = {n for n in names if n.startswith("configs")
             or any(n == e or n.startswith(e + ".") for e in ENTRY_POINTS)}
      assert not bad, f"{path} imports {sorted(bad)}, an entry point above it"


def test_the_parts_of_the_package_form_no_cycle():
  edges = {}
  for path, names in _imports().items():
    source = _unit(path)
    for name in names:
      target = _unit(name)
      if target in edges.get(source, set()) or target == source:
        continue
      if name.startswith("siriib_jax."):
        edges.setdefault(source, set()).add(target)
  # Depth-first search for a back edge.
  state = {}

  def visit(node, trail):
    state[node] = "open"
    for target in sorted(edges.get(node, ())):
      if state.get(target) == "open":
        raise AssertionError(f"import cycle: {' -> '.join(trail + [node, target])}")
      if target not in state:
        visit(target, trail + [node])
    state[node] = "done"

  for node in sorted(edges):
    if node not in state:
      visit(node, [])


def test_a_commands_library_is_imported_only_by_its_command():
  for library, commands in COMMAND_LIBRARIES.items():
    for path, names in _imports().items():
      module = path.replace(os.sep, ".").removesuffix(".py").removesuffix(".__init__")
      if module in commands or module.startswith(library):
        continue
      bad = {n for n in names if n == library or n.startswith(library + ".")}
      assert not bad, f"{path} imports {sorted(bad)}, which only {commands} may import"


def test_the_library_folders_and_commands_exist():
  for folder in LIBRARY_FOLDERS:
    assert os.path.isfile(os.path.join(ROOT, folder, "__init__.py")), folder
  for command in ENTRY_POINTS + tuple(c for cs in COMMAND_LIBRARIES.values() for c in cs):
    assert os.path.isfile(os.path.join(os.path.dirname(ROOT), *command.split(".")) + ".py")
