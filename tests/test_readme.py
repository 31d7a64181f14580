"""The README's first screen gives exactly two commands, and CI runs the second one verbatim."""

import re

from conftest import REPO


def test_readme_commands_match_ci():
    readme = (REPO / "README.md").read_text()
    first_screen = readme.split("---")[0]
    commands = re.findall(r"```bash\n(.+?)\n```", first_screen, re.S)
    assert len(commands) == 2
    assert "yolo train model=dsmoe-n.yaml data=synthetic-defects.yaml" in commands[0]
    assert commands[1] in (REPO / ".ci" / "run").read_text().splitlines()
