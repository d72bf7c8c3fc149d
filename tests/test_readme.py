"""The README's promises that code can check: the two set-up commands on top, CI running the README's test
command, and the link to the generated config reference."""
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
    lines = [line for line in read(".ci/run").splitlines() if line.strip() and not line.startswith("#")]
    assert lines[-1].strip() == "make test"


def test_readme_links_the_generated_config_reference_instead_of_copying_it():
    readme = read("README.md")
    assert "(docs/config_reference.md)" in readme
    assert "| key | type | default | meaning |" not in readme
    assert read("docs/config_reference.md") == config_reference_markdown(), "regenerate docs/config_reference.md"
