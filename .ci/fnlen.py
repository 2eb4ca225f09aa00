#!/usr/bin/env python3
"""Fails when a function on the request path is longer than 60 lines, or any function of the
product longer than 80.

The request path is src/proxy/, src/http/, src/policy.rs, src/rules.rs, src/scrub.rs and
src/credential.rs. A function runs from its `fn` line to the closing brace at its own indent
(rustfmt's layout); test modules are not counted.

Usage: .ci/fnlen.py    (exit 1 on a function over its limit)
"""

import glob
import os
import re
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
PRODUCT = ["src", "core/src", "admin/src", "certs-cache/src"]
REQUEST_PATH = ("src/proxy/", "src/http/", "src/policy.rs", "src/rules.rs", "src/scrub.rs",
                "src/credential.rs")
FN = re.compile(r"^(\s*)(?:pub(?:\([^)]*\))?\s+)?(?:async\s+)?(?:const\s+)?fn\s+(\w+)")


def functions(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    for i, line in enumerate(lines):
        if re.match(r"\s*#\[cfg\(test\)\]", line):
            return
        m = FN.match(line)
        if not m:
            continue
        indent = m.group(1)
        for j in range(i, len(lines)):
            if j > i and lines[j].startswith(indent + "}") and lines[j][len(indent)] == "}":
                yield m.group(2), i + 1, j - i + 1
                break
            if lines[j].rstrip().endswith(";") and "{" not in "".join(lines[i:j + 1]):
                break


def main():
    bad = []
    for crate in PRODUCT:
        for path in sorted(glob.glob(os.path.join(ROOT, crate, "**", "*.rs"), recursive=True)):
            rel = os.path.relpath(path, ROOT)
            for name, line, length in functions(path):
                if rel.startswith(REQUEST_PATH) and length > 60:
                    bad.append(f"{rel}:{line} {name}: {length} lines (request path: at most 60)")
                elif length > 80:
                    bad.append(f"{rel}:{line} {name}: {length} lines (at most 80)")
    for b in bad:
        print(b)
    if bad:
        return 1
    print("no function over 80 lines, none on the request path over 60")
    return 0


if __name__ == "__main__":
    sys.exit(main())
