"""requirements.txt and CaGNet_environment.yaml must pin the same packages to the same versions."""
import os
import re

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pins_from_lines(lines):
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)", line)
        if line:
            assert match, f"unpinned or malformed requirement: {line!r}"
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_requirements_and_conda_environment_agree():
    with open(os.path.join(ROOT, "requirements.txt")) as handle:
        req = pins_from_lines(handle)
    with open(os.path.join(ROOT, "CaGNet_environment.yaml")) as handle:
        env = yaml.safe_load(handle)
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1
    assert pins_from_lines(pip_lists[0]) == req
    assert req["torch"] == "2.14.1" and req["torchvision"] == "0.29.1"
    for name in ("numpy", "pyyaml", "opencv-python-headless", "tensorboardx", "tqdm", "gensim", "pytest"):
        assert name in req, name
