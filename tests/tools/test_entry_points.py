"""Every tool runs both ways the docs show: `python -m tools.<name>` and `python tools/<name>.py` (the issue
trackers' and the original's habit), so a copied command works."""
import glob
import os
import subprocess
import sys

import pytest

from tests.e2e_config import ROOT

TOOLS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "tools", "*.py"))
               if "__main__" in open(p).read())


@pytest.mark.slow
@pytest.mark.parametrize("name", TOOLS)
def test_a_tool_runs_as_a_file_path_from_anywhere(name, tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", f"{name}.py"), "--help"], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout


def test_every_tool_with_a_main_is_covered():
    assert {"benchmark", "predict", "scaling", "paper_table", "summarize_runs"} <= set(TOOLS)
