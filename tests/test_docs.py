"""The documentation: a README that fits on two screens, and no link to a missing file."""

import os

from tests.helpers import REPO_ROOT, load_repository_module

repository_links = load_repository_module("docs", "_ext", "repository_links.py")


def test_the_readme_fits_on_two_screens():
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as file:
        assert len(file.read().splitlines()) <= 200


def test_relative_links_are_found_and_urls_anchors_and_code_are_not():
    text = "\n".join([
        "See [the guide](docs/guide.md#flags) and ![a picture](pics/a.png).",
        "[a site](https://example.com), [an anchor](#flags), [mail](mailto:a@b.c)",
        "`[not a link](in/code.md)` and [two](x.md) [links](y/z.md \"title\")",
        "```", "[in a block](block.md)", "```"])
    assert repository_links.relative_links(text) == [
        (1, "docs/guide.md"), (1, "pics/a.png"), (3, "x.md"), (3, "y/z.md")]


def test_a_link_to_a_missing_file_is_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("[ok](docs/page.md)\n[gone](docs/gone.md)\n")
    (tmp_path / "CHANGELOG.md").write_text("")
    (tmp_path / "docs" / "page.md").write_text("[up](../README.md) [gone](nothing.png)\n")
    assert repository_links.missing_targets(str(tmp_path)) == [
        "README.md:2: the link to docs/gone.md names no file in the repository",
        "docs/page.md:1: the link to nothing.png names no file in the repository"]


def test_every_relative_link_in_the_readme_and_the_docs_names_a_file():
    assert repository_links.missing_targets(REPO_ROOT) == []
