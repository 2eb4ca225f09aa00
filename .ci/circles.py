#!/usr/bin/env python3
"""Fails when files of one crate import each other in a loop (a circle).

Each crate's source files are modules (`src/a/b.rs` is `a::b`); file A imports file B when A
names B's module or an item of it through `crate::`, `super::`, `self::` or a child module's
name, in a `use` or inline. A module and its own descendants are one unit (`proxy.rs` and
`proxy/client.rs`: the parent declares the child, the child uses the parent's types), so those
arrows are not counted; every other loop is a circle, printed with the names that tie it.

Usage: .ci/circles.py [ROOT]    (exit 1 when there is a circle)
"""

import os
import re
import sys

CRATES = ["src", "core/src", "admin/src", "certs-cache/src"]
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def modules(src):
    """{module path tuple: file} for one crate's source dir."""
    found = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), src)[:-3].split(os.sep)
            if rel in (["lib"], ["main"]):
                path = ()
            elif rel[-1] == "mod":
                path = tuple(rel[:-1])
            else:
                path = tuple(rel)
            found[path] = os.path.join(dirpath, f)
    return found


def strip(text):
    """The code without comments and string literals (crudely, enough for paths)."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def use_paths(tree, prefix=""):
    """The paths a `use` tree names: `a::{b, c::{d, e}}` -> a::b, a::c::d, a::c::e."""
    tree = tree.strip()
    m = re.match(r"^(.*?)\{(.*)\}$", tree, re.S)
    if not m:
        yield prefix + tree.split(" as ")[0].strip()
        return
    head, body = m.group(1), m.group(2)
    depth, part, parts = 0, "", []
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(part)
            part = ""
        else:
            part += ch
    parts.append(part)
    for p in parts:
        if p.strip():
            yield from use_paths(p, prefix + head)


def resolve(segments, here, mods, children):
    """The module a path names (the deepest one that is a file), or None."""
    if not segments:
        return None
    first, rest = segments[0], segments[1:]
    if first == "crate":
        base = ()
    elif first in ("super", "self"):
        base = here
        while rest and first == "super" and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
        if first == "super":
            base = base[:-1]
    elif first in children:
        base, rest = here, [first] + rest
    else:
        return None
    path = base
    for seg in rest:
        if seg == "self":
            continue
        if path + (seg,) in mods:
            path = path + (seg,)
        else:
            break
    return path


def arrows(src):
    """{(from file, to file): set of names} for one crate."""
    mods = modules(src)
    out = {}
    for here, file in mods.items():
        code = strip(open(file, encoding="utf-8").read())
        children = {c[-1] for c in mods if len(c) == len(here) + 1 and c[: len(here)] == here}
        paths = []
        for m in re.finditer(r"\buse\s+([^;]+);", code):
            paths.extend(use_paths(m.group(1)))
        code_no_use = re.sub(r"\buse\s+[^;]+;", "", code)
        for m in re.finditer(rf"\b(?:crate|super|self|{IDENT})(?:::{IDENT})+", code_no_use):
            paths.append(m.group(0))
        for p in paths:
            segs = [s for s in p.replace(" ", "").split("::") if s]
            target = resolve(segs, here, mods, children)
            if target is None or target == here:
                continue
            # A module and its descendants are one unit.
            short, long_ = sorted((here, target), key=len)
            if long_[: len(short)] == short:
                continue
            name = segs[-1]
            out.setdefault((mods[here], mods[target]), set()).add(name)
    return out


def circles(edges):
    """Strongly connected components with more than one file (Tarjan)."""
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    bad = 0
    for crate in CRATES:
        src = os.path.join(root, crate)
        if not os.path.isdir(src):
            continue
        edges = arrows(src)
        for comp in circles(edges):
            bad += 1
            rel = [os.path.relpath(f, root) for f in comp]
            print(f"circle: {', '.join(rel)}")
            for (a, b), names in sorted(edges.items()):
                if a in comp and b in comp:
                    print(f"  {os.path.relpath(a, root)} -> {os.path.relpath(b, root)}: "
                          f"{', '.join(sorted(names))}")
    if bad:
        print(f"{bad} circle(s): move what both sides need below them (see .ci/circles.py)")
        return 1
    print("no circles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
