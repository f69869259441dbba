#!/usr/bin/env python3
"""Syntax check of Swift files without a Swift toolchain (tree-sitter-swift).

    python ios_demo/tools/swift_syntax.py                 # every .swift file under ios_demo/
    python ios_demo/tools/swift_syntax.py FILE.swift ...

Prints `path:line:col: syntax error (...)` for every error or missing node the parser
reports and exits 1 when there is one. Needs `pip install tree-sitter==0.26.1
tree-sitter-swift==0.7.4` (the project's `test` extra). A grammar, not the compiler:
`ios_demo/tools/check.sh parse` runs `swiftc -parse` where the Linux toolchain exists.
"""

from __future__ import annotations

import sys
from pathlib import Path

IOS_DEMO = Path(__file__).resolve().parents[1]


def parser():
    import tree_sitter
    import tree_sitter_swift

    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_swift.language()))


def swift_files(root: Path = IOS_DEMO) -> list[Path]:
    """Every .swift file under `root`, build folders excluded."""
    return sorted(p for p in root.rglob("*.swift") if not {".build", "build"} & set(p.parts))


def errors(source: bytes, p=None) -> list[tuple[int, int, str]]:
    """(line, column, what) of each ERROR or MISSING node, 1-based, in source order."""
    tree = (p or parser()).parse(source)
    out: list[tuple[int, int, str]] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_missing:
            out.append((*_pos(node), f"missing {node.type}"))
        elif node.is_error:
            text = source[node.start_byte:node.end_byte].decode(errors="replace").strip()
            out.append((*_pos(node), f"unexpected {text[:40]!r}"))
        elif node.has_error:
            stack.extend(reversed(node.children))
    return sorted(out)


def _pos(node) -> tuple[int, int]:
    return node.start_point[0] + 1, node.start_point[1] + 1


def check(paths: list[Path]) -> list[str]:
    """One `path:line:col: syntax error (...)` line per problem."""
    p = parser()
    return [f"{path}:{line}:{col}: syntax error ({what})"
            for path in paths for line, col, what in errors(path.read_bytes(), p)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    paths = [Path(a) for a in args] or swift_files()
    problems = check(paths)
    for line in problems:
        print(line)
    print(f"{len(paths)} Swift files, {len(problems)} syntax errors")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
