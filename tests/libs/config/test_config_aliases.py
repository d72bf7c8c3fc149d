"""The self-training configs under the original release's file names, and this project's earlier names as aliases.

The release ships configs_st_voc.yaml, configs_st_coco.yaml, configs_st_context.yaml and their
configs_st_transfer_* twins; commands copied from its issues name those files. This project first shipped
them as configs_st_voc12.yaml / configs_st_cocostuff.yaml; those names stay as symbolic links, so there is one
set of files and both spellings load the same validated config.
"""
import os
from pathlib import Path

import pytest

from libs.config import check_schedule_keys, load_config
from libs.config.__main__ import main as config_cli
from tests.e2e_config import ROOT

CONFIGS = Path(ROOT) / "configs"

# alias (this project's earlier name) -> the original release's name
ALIASES = {
    "configs_st_voc12.yaml": "configs_st_voc.yaml",
    "configs_st_transfer_voc12.yaml": "configs_st_transfer_voc.yaml",
    "configs_st_cocostuff.yaml": "configs_st_coco.yaml",
    "configs_st_transfer_cocostuff.yaml": "configs_st_transfer_coco.yaml",
}
ORIGINAL_ST_NAMES = ("configs_st_voc.yaml", "configs_st_transfer_voc.yaml", "configs_st_context.yaml",
                     "configs_st_transfer_context.yaml", "configs_st_coco.yaml", "configs_st_transfer_coco.yaml")


@pytest.mark.parametrize("name", ORIGINAL_ST_NAMES)
def test_original_names_are_real_files_that_name_themselves(name):
    path = CONFIGS / name
    assert path.is_file() and not path.is_symlink(), f"{path} must be a real file (the one copy of the config)"
    text = path.read_text(encoding="utf-8")
    assert f"--config ./configs/{name} " in text.splitlines()[1], "the header's command must use this file's name"


@pytest.mark.parametrize("alias, original", sorted(ALIASES.items()))
def test_alias_is_a_link_to_the_original_and_loads_identically(alias, original):
    path = CONFIGS / alias
    assert path.is_symlink(), f"{path} must be a symbolic link to {original}, not a copy"
    assert os.readlink(path) == original
    assert path.read_bytes() == (CONFIGS / original).read_bytes()
    assert load_config(path) == load_config(CONFIGS / original)
    assert alias in (CONFIGS / original).read_text(encoding="utf-8").splitlines()[2], "the header names its alias"


def test_both_spellings_pass_the_config_check(capsys):
    names = sorted(ALIASES) + sorted(ALIASES.values())
    assert config_cli(["check", *[str(CONFIGS / n) for n in names]]) == 0
    assert capsys.readouterr().out.count("ok   ") == len(names)
    for name in names:
        schedule = "st_mixed" if "transfer" in name else "st"
        assert config_cli(["check", "--schedule", schedule, str(CONFIGS / name)]) == 0


@pytest.mark.parametrize("config, schedule, suggested", [
    ("voc12.yaml", "st", "configs_st_voc.yaml"),
    ("voc12_finetune.yaml", "st_mixed", "configs_st_transfer_voc.yaml"),
    ("cocostuff.yaml", "st", "configs_st_coco.yaml"),
    ("cocostuff_finetune.yaml", "st_mixed", "configs_st_transfer_coco.yaml"),
    ("context.yaml", "st_mixed", "configs_st_transfer_context.yaml"),
    ("configs_st_voc12.yaml", "st_mixed", "configs_st_transfer_voc.yaml"),      # asked through an alias
    ("configs_st_transfer_coco.yaml", "st", "configs_st_coco.yaml"),
])
def test_schedule_errors_suggest_the_original_names(config, schedule, suggested):
    with pytest.raises(ValueError) as err:
        check_schedule_keys(load_config(CONFIGS / config), schedule)
    text = str(err.value)
    assert text.endswith(f"; use {CONFIGS / suggested}"), text
    assert (CONFIGS / suggested).is_file()
