"""The package's import graph: no cycles, and no module reaches into another's private names."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "medfusion"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
  return {_module_name(p): ast.parse(p.read_text()) for p in PACKAGE.rglob("*.py")}


def _imports(tree: ast.Module, known) -> tuple[set[str], dict[str, str]]:
  """(medfusion modules imported anywhere in the file, local alias -> module)."""
  found, aliases = set(), {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name in known:
          found.add(a.name)
          aliases[a.asname or a.name] = a.name
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medfusion"):
      for a in node.names:
        sub = f"{node.module}.{a.name}"
        target = sub if sub in known else node.module
        found.add(target)
        if sub in known:
          aliases[a.asname or a.name] = sub
  return found, aliases


def test_import_graph_has_no_cycles():
  modules = _modules()
  graph = {name: _imports(tree, modules)[0] - {name} for name, tree in modules.items()}
  state = {}

  def visit(node, path):
    if state.get(node) == "done":
      return
    assert state.get(node) != "open", " -> ".join([*path, node])
    state[node] = "open"
    for nxt in graph.get(node, ()):
      visit(nxt, [*path, node])
    state[node] = "done"

  for name in graph:
    visit(name, [])


def test_no_module_uses_another_modules_private_names():
  modules = _modules()
  offences = []
  for name, tree in modules.items():
    _, aliases = _imports(tree, modules)
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medfusion"):
        offences += [f"{name}: from {node.module} import {a.name}" for a in node.names if a.name.startswith("_")]
      if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
        if node.attr.startswith("_") and not node.attr.startswith("__"):
          offences.append(f"{name}: {node.value.id}.{node.attr}")
  assert not offences, offences
