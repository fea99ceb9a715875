#!/usr/bin/env python3
"""Import structure of the server crate: no import cycle between modules, and nothing outside
`http/` imports `crate::http`.

Reads every module file of crates/keyroll-server/src (one module per file: `x.rs` and
`x/mod.rs` are `x`, `x/y.rs` is `x::y`, `lib.rs` is the crate root) and the paths it names
through `crate::…` (in `use` trees and in code; `super::` is resolved too, except inside an
inline `mod … {` such as the tests, where it names the file itself). A path names the longest
module it starts with. The crate root (`lib.rs`) wires the server: its own `m::…` paths count as
references too, and it may build the HTTP router. Comments and string literals are ignored.

Exit 1, naming each cycle and each forbidden import, when any is found. Python 3 stdlib only.
Usage: .ci/import-cycles.py [SRC_DIR]
"""

import re
import sys
from pathlib import Path

SRC = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "crates/keyroll-server/src"
ROOT = "crate"


def module_of(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts == ["lib"]:
        return ROOT
    if parts[-1] == "mod":
        parts = parts[:-1]
    return "::".join(parts)


def strip(text: str) -> str:
    """Removes comments, string and char literals (keeps line structure)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            chunk = text[i : n if j < 0 else j + 2]
            out.append("\n" * chunk.count("\n"))
            i = n if j < 0 else j + 2
        elif c == "r" and re.match(r'r#*"', text[i:]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = text.find('"' + m.group(1), i + len(m.group(0)))
            chunk = text[i : n if end < 0 else end + 1 + len(m.group(1))]
            out.append('""' + "\n" * chunk.count("\n"))
            i = n if end < 0 else end + 1 + len(m.group(1))
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text[i:j].count("\n"))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:]):
            m = re.match(r"'(\\.|[^\\'])'", text[i:])
            out.append("' '")
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def parse_tree(code: str, i: int, prefix: list, leaves: list) -> int:
    """Parses a path or use tree at code[i:] (after `crate::`), appending full paths."""
    path = list(prefix)
    while True:
        while i < len(code) and code[i].isspace():
            i += 1
        if i < len(code) and code[i] == "{":
            i += 1
            while True:
                while i < len(code) and (code[i].isspace() or code[i] == ","):
                    i += 1
                if i >= len(code) or code[i] == "}":
                    return i + 1
                i = parse_tree(code, i, path, leaves)
        m = re.compile(IDENT).match(code, i)
        if not m:
            leaves.append(path)
            return i
        seg = m.group(0)
        i = m.end()
        if seg != "self":
            path = path + [seg]
        rest = re.compile(r"\s*::\s*").match(code, i)
        if rest and rest.end() < len(code) and (code[rest.end()] == "{" or re.compile(IDENT).match(code, rest.end())):
            i = rest.end()
            continue
        leaves.append(path)
        return i


def main() -> int:
    files = sorted(p for p in SRC.rglob("*.rs"))
    modules = {module_of(p): p for p in files}
    top = {m for m in modules if m != ROOT and "::" not in m}
    edges = {m: {} for m in modules}  # module -> {target: first line}

    def resolve(segments):
        for k in range(len(segments), 0, -1):
            cand = "::".join(segments[:k])
            if cand in modules:
                return cand
        return ROOT

    for mod, path in modules.items():
        code = strip(path.read_text())
        inline = [m.start() for m in re.finditer(r"\bmod\s+" + IDENT + r"\s*\{", code)]
        refs = []
        for m in re.finditer(r"\b(crate|super)\s*::\s*", code):
            leaves = []
            parse_tree(code, m.end(), [], leaves)
            if m.group(1) == "super":
                if inline and m.start() > inline[0]:
                    continue  # inside an inline module (tests): `super` is this file
                parent = mod.split("::")[:-1]
                leaves = [parent + leaf for leaf in leaves]
            refs += [(m.start(), leaf) for leaf in leaves]
        if mod == ROOT:
            for m in re.finditer(r"(?<![A-Za-z0-9_:])(" + IDENT + r")\s*::", code):
                if m.group(1) in top:
                    leaves = []
                    parse_tree(code, m.start(), [], leaves)
                    refs += [(m.start(), leaf) for leaf in leaves]
        for pos, leaf in refs:
            target = resolve(leaf)
            if target != mod:
                edges[mod].setdefault(target, (code.count("\n", 0, pos) + 1, "::".join(leaf)))

    problems = []
    for mod, targets in sorted(edges.items()):
        if mod in (ROOT, "http") or mod.startswith("http::"):
            continue
        for t, (line, what) in sorted(targets.items()):
            if t == "http" or t.startswith("http::"):
                problems.append(f"{modules[mod].relative_to(SRC)}:{line}: `{mod}` imports `crate::{what}` (only http/ may import the HTTP layer)")

    # Cycles: strongly connected components (Tarjan), then one shortest cycle per component.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            visit(v)

    def shortest_cycle(start, comp):
        from collections import deque
        prev, queue = {start: None}, deque([start])
        while queue:
            v = queue.popleft()
            for w in sorted(edges[v]):
                if w not in comp:
                    continue
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return list(reversed(path)) + [start]
                if w not in prev:
                    prev[w] = v
                    queue.append(w)
        return [start]

    for comp in sccs:
        cyc = shortest_cycle(comp[0], set(comp))
        steps = " -> ".join(
            f"{a} ({modules[a].relative_to(SRC)}:{edges[a][b][0]} crate::{edges[a][b][1]})" for a, b in zip(cyc, cyc[1:])
        )
        problems.append(f"import cycle among {{{', '.join(comp)}}}: {steps} -> {cyc[-1]}")

    for p in problems:
        print(p)
    if problems:
        print(f"import-cycles: {len(problems)} problem(s) in {SRC}")
        return 1
    print(f"import-cycles: {len(modules)} modules, no cycle, http imported only inside http/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
