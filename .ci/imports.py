#!/usr/bin/env python3
"""The import graph of src/: one edge per file that names another module of the crate (`crate::a::b`,
`super::x`, `self::x` in a module root), printed as `from -> to`, then checked for cycles.

Exits 1, naming the files of a cycle, when the dependencies do not run one way. Files are
modules: src/a.rs and src/a/mod.rs are `a`, src/a/b.rs is `a::b`. A module's own `mod x;`
declarations and re-exports of its children are not edges (a parent opens its children)."""
import re
import sys
from pathlib import Path

root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "src"
modules = {}
for f in root.rglob("*.rs"):
    parts = list(f.relative_to(root).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    if parts in (["lib"], ["main"]):
        continue
    modules["::".join(parts)] = f


def resolve(path):
    """The longest module prefix of a `a::b::Name` path."""
    parts = path.split("::")
    for n in range(len(parts), 0, -1):
        name = "::".join(parts[:n])
        if name in modules:
            return name
    return None


edges = set()
for name, f in modules.items():
    text = f.read_text()
    # Leave out tests: they may reach anywhere.
    text = text.split("#[cfg(test)]")[0]
    parent = name.rsplit("::", 1)[0] if "::" in name else ""
    is_root = f.name == "mod.rs"
    here = name if is_root else parent
    for m in re.finditer(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)", text):
        kind, rest = m.group(1), m.group(2)[2:]
        if kind == "crate":
            full = rest
        elif kind == "super":
            base = here.rsplit("::", 1)[0] if "::" in here else ""
            full = f"{base}::{rest}" if base else rest
        else:
            full = f"{here}::{rest}" if here else rest
        to = resolve(full)
        if to is None or to == name:
            continue
        # A module root opening its own children is structure, not a dependency.
        if to.startswith(name + "::"):
            continue
        edges.add((name, to))

for a, b in sorted(edges):
    print(f"{a} -> {b}")

graph = {}
for a, b in edges:
    graph.setdefault(a, set()).add(b)
state, stack = {}, []


def visit(node):
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
        if state.get(nxt) == 1:
            cycle = stack[stack.index(nxt):] + [nxt]
            print("import cycle: " + " -> ".join(cycle), file=sys.stderr)
            sys.exit(1)
        if nxt not in state:
            visit(nxt)
    stack.pop()
    state[node] = 2


for node in sorted(graph):
    if node not in state:
        visit(node)
print(f"{len(modules)} modules, {len(edges)} edges, no cycles")
