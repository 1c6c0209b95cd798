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


# The layers of README's Layout, top to bottom; a module imports only from its own layer or the ones below it.
LAYERS = (
  ("train", "score", "sweep", "explain", "sample", "export", "prepare", "shift"),  # entry points
  ("cli",),
  ("explanations", "configcheck"),
  ("training",),
  ("evaluation",),
  ("classify", "modeldir"),
  ("models", "diffusion", "data", "checkpoint"),
  ("metrics", "plots", "writers", "sharding", "runtime", "stored_config", "errors"),
)


def _layer(module: str) -> int:
  top = module.split(".")[1]
  (rank,) = [i for i, names in enumerate(LAYERS) if top in names]
  return rank


def test_nothing_imports_upward():
  modules = _modules()
  assert {name.split(".")[1] for name in modules if "." in name} <= {n for names in LAYERS for n in names}
  upward = [
    f"{name} imports {target}"
    for name, tree in modules.items()
    if "." in name
    for target in _imports(tree, modules)[0]
    if "." in target and _layer(target) < _layer(name)
  ]
  assert not upward, upward
