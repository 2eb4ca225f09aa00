#!/usr/bin/env python3
"""Fails on a broken link in the README or the manual (docs/src), or a chapter the book omits.

A relative link must name a file that exists; a link with `#anchor` to a Markdown file must
name one of its headings (slugged as mdBook and GitHub do). Every page under docs/src must be
listed in docs/src/SUMMARY.md. Links to http(s) addresses are not fetched (CI has no network).

Usage: .ci/doclinks.py    (exit 1 on any problem)
"""

import os
import re
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading):
    heading = re.sub(r"[`*_]", "", heading.strip().lower())
    heading = re.sub(r"[^\w\- ]", "", heading)
    return heading.replace(" ", "-")


def headings(path):
    found = set()
    in_code = False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def pages():
    out = [os.path.join(ROOT, "README.md")]
    for dirpath, _, files in os.walk(os.path.join(ROOT, "docs", "src")):
        out.extend(os.path.join(dirpath, f) for f in files if f.endswith(".md"))
    return sorted(out)


def main():
    problems = []
    for page in pages():
        text = open(page, encoding="utf-8").read()
        text = re.sub(r"```.*?```", "", text, flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            where = os.path.relpath(page, ROOT)
            if not os.path.exists(dest):
                problems.append(f"{where}: {target}: no such file")
            elif anchor and dest.endswith(".md") and anchor not in headings(dest):
                problems.append(f"{where}: {target}: no heading #{anchor}")
    summary_path = os.path.join(ROOT, "docs", "src", "SUMMARY.md")
    summary = open(summary_path, encoding="utf-8").read()
    listed = {os.path.normpath(os.path.join(ROOT, "docs", "src", t)) for t in LINK.findall(summary)}
    for page in pages():
        if "docs" in page and not page.endswith("SUMMARY.md") and page not in listed:
            problems.append(f"{os.path.relpath(page, ROOT)}: not in docs/src/SUMMARY.md")
    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"doc links: {len(pages())} pages, no broken link")
    return 0


if __name__ == "__main__":
    sys.exit(main())
