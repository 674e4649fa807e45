"""A Sphinx extension: every relative link in README.md and in docs/ names a file that exists.

Sphinx checks the links between its own pages; this checks the rest (links to source files,
to pictures, and the README's links into the docs), so that no page sends a reader to a
file that is not in the repository. A missing target is a warning, which `-W` makes an error.
"""

from __future__ import annotations

import os
import re

LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
def relative_links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of each Markdown link or image that is not a URL or an anchor."""
    found = []
    in_code = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        for match in LINK.finditer(re.sub(r"`[^`]*`", "", line)):
            target = (match.group(1) or match.group(2)).split("#", 1)[0]
            if target and not re.match(r"^[a-z][a-z0-9+.-]*:", target):
                found.append((number, target))
    return found


def missing_targets(root: str) -> list[str]:
    """"FILE:LINE: the link to TARGET ..." for each relative link in README.md, CHANGELOG.md
    and the Markdown pages of docs/ (below the repository root `root`) that names no file."""
    files = [os.path.join(root, "README.md"), os.path.join(root, "CHANGELOG.md")]
    for directory, _, names in os.walk(os.path.join(root, "docs")):
        if "_build" in directory.split(os.sep):
            continue
        files += [os.path.join(directory, name) for name in names if name.endswith(".md")]
    problems = []
    for path in sorted(files):
        with open(path, encoding="utf-8") as file:
            text = file.read()
        for number, target in relative_links(text):
            if not os.path.exists(os.path.join(os.path.dirname(path), target)):
                problems.append(f"{os.path.relpath(path, root)}:{number}: the link to {target} "
                                "names no file in the repository")
    return problems


def check_repository_links(app, env) -> None:
    from sphinx.util import logging  # only in a Sphinx build: the tests import this module

    logger = logging.getLogger(__name__)
    for problem in missing_targets(os.path.dirname(app.srcdir)):
        logger.warning(problem, type="repository_links")


def setup(app):
    app.connect("env-check-consistency", check_repository_links)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
