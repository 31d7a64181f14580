"""The README's first screen gives exactly two commands, and CI runs the second one verbatim; the docs' links resolve."""

import re

from conftest import REPO


def test_readme_commands_match_ci():
    readme = (REPO / "README.md").read_text()
    first_screen = readme.split("---")[0]
    commands = re.findall(r"```bash\n(.+?)\n```", first_screen, re.S)
    assert len(commands) == 2
    assert "yolo train model=dsmoe-n.yaml data=synthetic-defects.yaml" in commands[0]
    assert commands[1] in (REPO / ".ci" / "run").read_text().splitlines()


def slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_doc_links_resolve():
    """Every relative link in the docs and reports names a file in the repository, and every #anchor a heading."""
    docs = [REPO / "README.md", REPO / "BENCHMARKS.md"]
    docs += [p for p in (REPO / "benchmarks").rglob("*.md") if not {"data", "runs"} & set(p.parts)]
    broken = []
    for doc in docs:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path) if path else doc
            if not file.exists():
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such file)")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
                if anchor not in {slug(h) for h in headings}:
                    broken.append(f"{doc.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
