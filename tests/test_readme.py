"""The README's promises that code can check: the two set-up commands on top, CI running the README's test
command, and a config reference that matches the schema."""
import os
import re

from libs.config import config_reference_markdown

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as handle:
        return handle.read()


def test_readme_starts_with_demo_and_test_commands_that_exist_in_the_makefile():
    first_block = re.search(r"```bash\n(.*?)```", read("README.md"), re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = read("Makefile")
    assert re.search(r"^demo: venv$", makefile, re.M) and re.search(r"^test: venv$", makefile, re.M)


def test_ci_runs_the_readme_test_command():
    lines = [l for l in read(".ci/run").splitlines() if l.strip() and not l.startswith("#")]
    assert lines[-1].strip() == "make test"


def test_readme_config_reference_matches_the_schema():
    reference = config_reference_markdown()
    table = reference[reference.index("| key |"):].rstrip()
    assert table in read("README.md"), "README's config reference is stale: regenerate it from the schema"
