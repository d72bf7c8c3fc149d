"""Config schema, loading, validation errors, schedule keys, saving and docs/config_reference.md."""
import copy
import os
import pickle
from pathlib import Path

import pytest
import yaml

from libs.config import (
    SCHEMA,
    Config,
    check_schedule_keys,
    config_reference_markdown,
    iter_max,
    learning_rate,
    load_config,
    save_config,
    validate_config,
)
from libs.engine.schedules import SCHEDULES
from tests.e2e_config import ROOT

SCHEDULE_SUFFIX = {name: schedule.suffix for name, schedule in SCHEDULES.items()}
REPO = Path(ROOT)
CONFIGS = REPO / "configs"

# file -> the schedule it is written for, and every schedule whose keys it carries.
SHIPPED = {
    "voc12.yaml": ("step1", {"step1"}),
    "voc12_finetune.yaml": ("mixed", {"mixed"}),
    "context.yaml": ("step1", {"step1"}),
    "context_finetune.yaml": ("mixed", {"mixed"}),
    "cocostuff.yaml": ("step1", {"step1"}),
    "cocostuff_finetune.yaml": ("mixed", {"mixed"}),
    "configs_st_voc12.yaml": ("st", {"step1", "mixed", "st"}),
    "configs_st_context.yaml": ("st", {"step1", "mixed", "st"}),
    "configs_st_cocostuff.yaml": ("st", {"step1", "mixed", "st"}),
    "configs_st_transfer_voc12.yaml": ("st_mixed", {"st_mixed"}),
    "configs_st_transfer_context.yaml": ("st_mixed", {"st_mixed"}),
    "demo.yaml": ("step1", {"step1"}),
    "demo_finetune.yaml": ("mixed", {"mixed"}),
    "configs_st_transfer_cocostuff.yaml": ("st_mixed", {"st_mixed"}),
    "spnet_voc12.yaml": ("step1", {"step1"}),
    "spnet_context.yaml": ("step1", {"step1"}),
    "spnet_cocostuff.yaml": ("step1", {"step1"}),
}

# A sample of the original configs' values per file (dotted key -> value).
EXPECTED = {
    "demo.yaml": {"ITER_MAX": 1500, "back_opt.OPTIMIZER": "adam", "back_opt.lr_multipliers": (1.0, 1.0, 1.0, 1.0),
                  "back.n_classes": 128, "IMAGE.SIZE.BASE": 64, "back.bn_calibration_batches": 20},
    "demo_finetune.yaml": {"ITER_MAX_TRANSFER": 1200, "interval_step1": 20, "interval_step2": 20,
                           "dis_scheduler.lr_policy": "constant", "lambda_D_cls_fake_transfer": 1,
                           "update_back": False, "init_model": "./Results/demo/0/models/00001500.pth"},
    "voc12.yaml": {
        "snapshot": 2000, "ITER_MAX": 40000, "dis_opt.lr": 0.00025, "back_opt.lr": 0.00025, "gen_opt.lr": 0.0002,
        "dis_scheduler.start_decay_iter": 10000, "dis_scheduler.step_size": 5000, "dis_scheduler.gamma": 0.71,
        "gen_scheduler.gamma": 0.71, "back_scheduler.lr_decay_iter": 10, "update_back": True, "gen_unseen_rate": 9,
        "top_p": 10, "init_model": "./trained_models/deeplabv2_resnet101_init.pth", "dis.out_dim_cls": 21,
        "num_unseen": 5, "lambda_D_cls_real": 1, "lambda_D_cls_fake": 0, "lambda_G_cls_transfer": 0,
        "ROOT": "./dataset/voc12/", "IMAGE.SIZE.TRAIN": 368, "IMAGE.MEAN.B": 104.008, "WARP_IMAGE": True,
    },
    "voc12_finetune.yaml": {
        "snapshot": 1000, "ITER_MAX_TRANSFER": 6000, "dis_opt.lr_transfer": 5e-05, "back_opt.lr_transfer": 0.0,
        "gen_opt.lr_transfer": 5e-05, "dis_scheduler.start_decay_iter": 3000, "dis_scheduler.step_size": 1000,
        "dis_scheduler.gamma": 0.1, "update_back": False, "lambda_D_cls_real": 0.75, "lambda_D_cls_fake": 0.25,
        "lambda_D_cls_fake_transfer": 0.125, "lambda_G_cls_transfer": 0,
        "init_model": "./Results/voc12/0/models/00040000.pth",
    },
    "context.yaml": {
        "num_unseen": 4, "gen_unseen_rate": 14, "top_p": 17, "dis.out_dim_cls": 34, "dis_scheduler.step_size": 10000,
        "dis_scheduler.gamma": 0.3, "gen_scheduler.step_size": 10000, "ROOT": "./dataset/context/",
    },
    "context_finetune.yaml": {
        "ITER_MAX_TRANSFER": 10000, "dis_scheduler.start_decay_iter": 5000, "gen_scheduler.step_size": 1000,
        "gen_scheduler.gamma": 0.3, "lambda_D_cls_fake_transfer": 0.125,
        "init_model": "./Results/context/0/models/00040000.pth",
    },
    "cocostuff.yaml": {
        "dis_opt.lr": 0.0005, "back_scheduler.lr_decay_iter": 100, "dis_scheduler.step_size": 10000,
        "gen_scheduler.step_size": 5000, "gen_unseen_rate": 59, "top_p": 91, "dis.out_dim_cls": 183, "num_unseen": 15,
        "lambda_G_cls_transfer": 1, "init_model": "./trained_models/spnet_cocostuff_init.pth",
    },
    "cocostuff_finetune.yaml": {
        "ITER_MAX_TRANSFER": 6000, "dis_opt.lr_transfer": 1e-05, "gen_opt.lr_transfer": 1e-05,
        "back_scheduler.lr_decay_iter": 10, "dis_scheduler.step_size": 2000, "lambda_D_cls_fake_transfer": 1,
        "lambda_G_cls_transfer": 1, "init_model": "./Results/cocostuff/0/models/00040000.pth",
    },
    "configs_st_voc12.yaml": {
        "IMAGE.SIZE.TRAIN": 328, "BATCH_SIZE.TRAIN": 4, "BATCH_SIZE.TEST": 4, "display_interval": 1,
        "ITER_MAX_TRANSFER": 20000, "ITER_MAX_ST": 10000, "dis_opt.lr_st": 0.0001, "back_opt.lr_st": 5e-05,
        "gen_opt.lr_transfer": 0.0001, "back_scheduler.lr_st": 5e-05, "back_scheduler.max_iter_transfer": 20000,
        "dis_scheduler.start_decay_iter": 5000, "gen_unseen_rate": 5, "top_p": 1, "back.contextual": 1,
        "back_version": 1, "noSBD_ZS3": False, "load_to": 0, "ROOT": "./dataset/voc12/", "datadir": "./dataset/",
        "save_path": "./Results",
    },
    "configs_st_context.yaml": {
        "NUM_WORKERS": 4, "lambda_G_GAN": 0, "top_p": 16, "gen_unseen_rate": 9, "dis_opt.lr_transfer": 0.0005,
        "back_opt.lr_st": 0.00025, "gen_opt.lr_st": 0.0002, "back_scheduler.init_lr_st": 0.00025,
        "back_scheduler.max_iter_transfer": 40000,
    },
    "configs_st_cocostuff.yaml": {
        "snapshot": 2000, "lambda_D_cls_real": 0.5, "lambda_D_cls_fake": 0.5, "lambda_D_cls_fake_transfer": 1,
        "gen_opt.lr_transfer": 0.0056, "dis_opt.lr_transfer": 0.0007, "back_opt.lr": 0.0005,
        "back_scheduler.lr_decay_iter": 100, "back_scheduler.max_iter": 60000, "gen_unseen_rate": 19,
    },
    "configs_st_transfer_voc12.yaml": {
        "ITER_MAX_ST_TRANSFER": 10000, "dis_opt.lr_st_transfer": 0.0001, "back_opt.lr_st_transfer": 0.0001,
        "dis_scheduler.step_size": 2500, "dis_scheduler.gamma": 0.5, "update_back": False, "top_p": 10,
        "init_back": "Results/voc12/0/models_st/00010000.pth",
    },
    "configs_st_transfer_context.yaml": {"gen_opt.lr_st_transfer": 0.0001, "lambda_G_GAN": 1, "top_p": 16},
    # SPNet (baselines-spec §1.2): crop 321, batch 10 (COCO 5 x ITER_SIZE 2), lr 2.5e-4, poly every 10 iterations
    "spnet_voc12.yaml": {"method": "spnet", "ITER_MAX": 20000, "BATCH_SIZE.TRAIN": 10, "ITER_SIZE": 1,
                         "IMAGE.SIZE.TRAIN": 321, "back_opt.lr": 0.00025, "back_scheduler.lr_decay_iter": 10,
                         "eval_mode": "warped", "calibration": 0.0, "dis.out_dim_cls": None, "lambda_B_KLD": None},
    "spnet_context.yaml": {"method": "spnet", "ITER_MAX": 20000, "BATCH_SIZE.TRAIN": 10, "num_unseen": 4},
    "spnet_cocostuff.yaml": {"method": "spnet", "ITER_MAX": 100000, "BATCH_SIZE.TRAIN": 5, "ITER_SIZE": 2,
                             "back_opt.WEIGHT_DECAY": 0.0005, "back_opt.MOMENTUM": 0.9},
    "configs_st_transfer_cocostuff.yaml": {
        "gen_opt.lr_st_transfer": 5e-05, "dis_scheduler.start_decay_iter": 3000, "gen_unseen_rate": 25, "top_p": 40,
        "lambda_D_cls_fake_transfer": 0.125, "lambda_G_cls_transfer": 0,
    },
}
# The demo table's configs (demo/table.py): SPNet on the demo, CaGNet's demo self-training (st, then st_mixed).
SHIPPED.update({"demo_spnet.yaml": ("step1", {"step1"}), "demo_st.yaml": ("st", {"st"}),
                "demo_st_transfer.yaml": ("st_mixed", {"st_mixed"})})
EXPECTED.update({
    "demo_spnet.yaml": {"method": "spnet", "ITER_MAX": 600, "back.n_classes": 600, "back_opt.OPTIMIZER": "adam",
                        "IMAGE.SIZE.BASE": 64, "eval_mode": "feature", "init_model": "none"},
    "demo_st.yaml": {"ITER_MAX_ST": 200, "update_back": True, "top_p": 1, "back_opt.lr_st": 5e-05,
                     "init_model": "./Results/demo/0/models_transfer/00001200.pth"},
    "demo_st_transfer.yaml": {"ITER_MAX_ST_TRANSFER": 200, "update_back": False, "back_opt.lr_st_transfer": 0.0,
                              "interval_step2": 20, "init_model": "./Results/demo/0/models_st/00000200.pth"},
})
# The same self-training files under the original release's names (the names above are aliases of them).
for _alias, _original in (("configs_st_voc12.yaml", "configs_st_voc.yaml"),
                          ("configs_st_transfer_voc12.yaml", "configs_st_transfer_voc.yaml"),
                          ("configs_st_cocostuff.yaml", "configs_st_coco.yaml"),
                          ("configs_st_transfer_cocostuff.yaml", "configs_st_transfer_coco.yaml")):
    SHIPPED[_original], EXPECTED[_original] = SHIPPED[_alias], EXPECTED[_alias]
# ZS3Net's configs (docs/baselines.md): stage 1, stage 2 (mixed), ZS3Net+ST (st and st_mixed), demo.
for _ds, _decay, _transfer, _rate, _p, _lr_st in (("voc12", 10, 39690, 9, 25, 5e-05),
                                                  ("context", 10, 12500, 14, 75, 0.00025),
                                                  ("cocostuff", 100, 29572, 59, 75, 5e-05)):
    SHIPPED[f"zs3net_{_ds}.yaml"] = ("step1", {"step1"})
    SHIPPED[f"zs3net_{_ds}_finetune.yaml"] = ("mixed", {"mixed"})
    SHIPPED[f"zs3net_st_{_ds}.yaml"] = ("st", {"st", "st_mixed"})
    EXPECTED[f"zs3net_{_ds}.yaml"] = {
        "method": "zs3net", "ITER_MAX": 40000, "back_opt.lr": 0.00025, "dis_opt.lr": 0.0025, "dis_opt.OPTIMIZER":
        "sgd", "back_scheduler.lr_decay_iter": _decay, "dis_scheduler.lr_decay_iter": _decay, "IMAGE.SIZE.TRAIN": 368,
        "BATCH_SIZE.TRAIN": 8, "zs3_noise_dim": 600, "zs3_mmd_sigmas": (2, 5, 10, 20, 40, 80)}
    EXPECTED[f"zs3net_{_ds}_finetune.yaml"] = {
        "method": "zs3net", "ITER_MAX_TRANSFER": _transfer, "dis_opt.lr_transfer": 0.07, "gen_opt.lr_transfer": 0.0002,
        "back_opt.lr_transfer": 0.0, "dis_scheduler.lr_decay_iter": 1, "gen_unseen_rate": _rate,
        "gen_scheduler.lr_policy": "constant", "zs3_mmd_samples": 128, "zs3_reset_classifier": True}
    EXPECTED[f"zs3net_st_{_ds}.yaml"] = {
        "method": "zs3net", "ITER_MAX_ST": 10000, "ITER_MAX_ST_TRANSFER": 10000, "back_opt.lr_st": _lr_st,
        "dis_opt.lr_st_transfer": 0.07, "zs3_pseudo_label_percent": _p, "init_model": "none"}
EXPECTED["zs3net_cocostuff.yaml"]["init_model"] = "./trained_models/spnet_cocostuff_init.pth"
SHIPPED["demo_zs3net.yaml"] = ("step1", {"step1"})
SHIPPED["demo_spnet.yaml"] = ("step1", {"step1"})
SHIPPED["demo_st.yaml"] = ("st", {"st"})
SHIPPED["demo_st_transfer.yaml"] = ("st_mixed", {"st_mixed"})
EXPECTED["demo_spnet.yaml"] = {"method": "spnet", "ITER_MAX": 600, "init_model": "none"}
EXPECTED["demo_st.yaml"] = {"ITER_MAX_ST": 200, "update_back": True,
                            "init_model": "./Results/demo/0/models_transfer/00001200.pth"}
EXPECTED["demo_st_transfer.yaml"] = {"ITER_MAX_ST_TRANSFER": 200, "update_back": False,
                                     "init_model": "./Results/demo/0/models_st/00000200.pth"}
SHIPPED["demo_zs3net_finetune.yaml"] = ("mixed", {"mixed"})
SHIPPED["demo_zs3net_st.yaml"] = ("st", {"st", "st_mixed"})
EXPECTED["demo_zs3net.yaml"] = {"method": "zs3net", "ITER_MAX": 1500, "back.n_classes": 128,
                                "back.bn_calibration_batches": 20}
EXPECTED["demo_zs3net_finetune.yaml"] = {"method": "zs3net",
                                         "init_model": "./Results/demo/zs3net/models/00001500.pth"}
EXPECTED["demo_zs3net_st.yaml"] = {"method": "zs3net", "zs3_pseudo_label_percent": 25}


def raw(name="voc12.yaml"):
    return yaml.safe_load((CONFIGS / name).read_text())


def write(tmp_path, data, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


def test_every_shipped_config_is_tested():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_config_loads_with_expected_values_and_schedules(name):
    cfg = load_config(CONFIGS / name)
    for key, value in EXPECTED[name].items():
        assert cfg.value(key) == value, key
    intended, supported = SHIPPED[name]
    check_schedule_keys(cfg, intended)
    for schedule in SCHEDULES:
        if schedule in supported:
            check_schedule_keys(cfg, schedule)
        else:
            with pytest.raises(ValueError, match=f"--schedule {schedule}"):
                check_schedule_keys(cfg, schedule)
    assert (cfg.value("init_model") is None) == name.startswith("configs_st")


def test_same_values_across_main_configs():
    for name in ("voc12", "voc12_finetune", "context", "context_finetune", "cocostuff", "cocostuff_finetune"):
        cfg = load_config(CONFIGS / f"{name}.yaml")
        assert cfg["BATCH_SIZE"] == {"TRAIN": 8, "TEST": 1}
        assert cfg["gen"]["in_dim_mlp"] == 1200 and cfg["back"]["n_classes"] == 600
        assert cfg["lambda_B_KLD"] == 100 and cfg["lambda_G_Content"] == 50 and cfg["gan_type"] == "lsgan"
        assert cfg["dataset"] in name and cfg["datadir"] == "./dataset/"


def test_schedule_error_names_file_keys_and_the_right_config():
    cfg = load_config(CONFIGS / "voc12.yaml")
    with pytest.raises(ValueError) as err:
        check_schedule_keys(cfg, "mixed")
    text = str(err.value)
    assert "voc12.yaml has no ITER_MAX_TRANSFER" in text
    assert "dis_opt.lr_transfer" in text and "--schedule mixed" in text
    assert "use " in text and text.endswith("voc12_finetune.yaml")
    with pytest.raises(ValueError, match="ITER_MAX_TRANSFER.*--schedule mixed"):
        iter_max(cfg, "mixed")
    with pytest.raises(ValueError, match="gen_opt.lr_st.*configs_st_voc.yaml"):
        learning_rate(cfg, "gen", "st")
    with pytest.raises(ValueError, match="schedule 'finetune'"):
        check_schedule_keys(cfg, "finetune")
    with pytest.raises(ValueError, match="net 'clf'"):
        learning_rate(cfg, "clf", "step1")


def test_schedule_helpers():
    assert SCHEDULE_SUFFIX == {"step1": "", "mixed": "_transfer", "st": "_st", "st_mixed": "_st_transfer"}
    st = load_config(CONFIGS / "configs_st_cocostuff.yaml")
    assert [iter_max(st, s) for s in ("step1", "mixed", "st")] == [40000, 20000, 10000]
    assert [learning_rate(st, "gen", s) for s in ("step1", "mixed", "st")] == [0.0002, 0.0056, 5e-05]
    assert learning_rate(load_config(CONFIGS / "voc12_finetune.yaml"), "back", "mixed") == 0.0


def test_defaults_of_new_keys_and_value_lookup():
    cfg = load_config(CONFIGS / "voc12.yaml")
    assert cfg["IMAGE"]["SIZE"]["BASE"] == 513
    assert cfg.value("back.n_blocks") == (3, 4, 23, 3)
    assert cfg.value("back.aspp_rates") == (6, 12, 18, 24)
    assert cfg.value("back.base_width") == 64 and cfg.value("back.context_width") == 256
    assert cfg.value("back.bn_calibration_batches") == 0
    assert cfg.value("gen.hidden_dims_mlp") == (1024, 960, 864, 784, 720)
    assert cfg.value("gen.dropout_mlp") == (0.1, 0.1, 0.3, 0.5, 0.5)
    assert cfg["seed"] == 0 and cfg["SCALE_RANGE"] == (0.5, 1.5)
    assert cfg.value("ITER_MAX_TRANSFER") is None and cfg.value("noSBD_ZS3", "absent") == "absent"
    assert cfg.get("init_back") is None
    with pytest.raises(KeyError, match="back.n_block"):
        cfg.value("back.n_block")
    assert cfg["back"].value("n_classes") == 600


def test_unknown_key_names_key_file_line_and_suggestion(tmp_path):
    text = (CONFIGS / "voc12.yaml").read_text().replace("  lr: 0.00025  ", "  lrr: 0.00025", 1)
    path = write(tmp_path, text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "lrr:" in row)
    with pytest.raises(ValueError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and f"line {line}" in message
    assert "'dis_opt.lrr'" in message and "did you mean 'dis_opt.lr'" in message and "0.00025" in message


def test_unknown_key_case_suggestion_and_unknown_section(tmp_path):
    data = raw()
    data["back_opt"]["weight_decay"] = data["back_opt"].pop("WEIGHT_DECAY")
    with pytest.raises(ValueError, match="did you mean 'back_opt.WEIGHT_DECAY'"):
        load_config(write(tmp_path, data))
    data = raw()
    data["generator"] = {"in_dim_mlp": 1200}
    with pytest.raises(ValueError, match="unknown key 'generator'"):
        load_config(write(tmp_path, data))


def test_missing_required_key(tmp_path):
    data = raw()
    del data["top_p"]
    del data["dis"]["drop_fc"]
    path = write(tmp_path, data)
    with pytest.raises(ValueError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and "'top_p'" in message and "'dis.drop_fc'" in message and "missing" in message


@pytest.mark.parametrize("dotted, value, expected", [
    ("BATCH_SIZE.TRAIN", "eight", "an integer"),
    ("BATCH_SIZE.TRAIN", 0, "an integer, >= 1"),
    ("snapshot", 2.5, "an integer"),
    ("WARP_IMAGE", "True", "true or false"),
    ("ROOT", 3, "a non-empty string"),
    ("lambda_G_GAN", True, "a number"),
    ("dis_opt.lr", "abc", "a number"),
    ("update_back", "maybe", "'t' or 'f'"),
    ("gan_type", "hinge", "'wgan-gp'"),
    ("content_loss", "L1", "'MMDLoss'"),
    ("back_scheduler.lr_policy", "cosine", "'poly'"),
    ("init", "he", "'kaiming'"),
    ("embedding", "glove", "'fastnvec'"),
    ("first", "step3", "'step2'"),
    ("SPLIT.TEST", "val", "'novel'"),
    ("DATAMODE", "Loader", "'LoaderZLS'"),
    ("loss_count", 7, "8"),
    ("dis_opt.OPTIMIZER", "adamw", "'rmsprop'"),
    ("back.n_blocks", [3, 4, 23], "length 4"),
    ("gen.dropout_mlp", [0.1, 2.0, 0.3, 0.5, 0.5], "each in [0, 1]"),
    ("dis", 5, "a section"),
])
def test_wrong_type_or_choice_names_key_value_and_expectation(tmp_path, dotted, value, expected):
    data = raw()
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    path = write(tmp_path, data)
    with pytest.raises(ValueError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and f"'{dotted}'" in message and repr(value) in message and expected in message


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "BATCH_SIZE:\n  TRAIN: 8\n  TEST: [1, 2\nNUM_WORKERS: 8\n")
    with pytest.raises(ValueError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "YAML syntax error" in str(err.value) and "line " in str(err.value)


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(ValueError, match="nope.yaml") as err:
        load_config(tmp_path / "nope.yaml")
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(ValueError, match="empty"):
        load_config(write(tmp_path, ""))


def test_numeric_strings_are_coerced(tmp_path):
    # As the original files are written: PyYAML reads 5e-05 (no dot) as a string.
    text = (CONFIGS / "voc12_finetune.yaml").read_text().replace("5.0e-05", "5e-05")
    assert yaml.safe_load(text)["dis_opt"]["lr_transfer"] == "5e-05"
    cfg = load_config(write(tmp_path, text))
    assert cfg["dis_opt"]["lr_transfer"] == 5e-05 and isinstance(cfg["dis_opt"]["lr_transfer"], float)
    assert cfg == load_config(CONFIGS / "voc12_finetune.yaml")
    data = raw()
    data["ITER_MAX"] = "4e4"
    data["lambda_D_gp"] = 10
    cfg = load_config(write(tmp_path, data))
    assert cfg["ITER_MAX"] == 40000 and isinstance(cfg["ITER_MAX"], int)
    assert cfg["lambda_D_gp"] == 10.0 and isinstance(cfg["lambda_D_gp"], float)


@pytest.mark.parametrize("value, expected", [("t", True), ("f", False), (True, True), (False, False)])
def test_update_back_is_a_bool(tmp_path, value, expected):
    data = raw()
    data["update_back"] = value
    assert load_config(write(tmp_path, data))["update_back"] is expected


def test_cross_field_checks():
    data = raw()
    data["gen"]["in_dim_mlp"] = 1100
    with pytest.raises(ValueError, match=r"gen.in_dim_mlp is 1100; expected .* = 1200"):
        validate_config(data, "x.yaml")
    data = raw()
    data["embedding"] = "word2vec"
    with pytest.raises(ValueError, match="x.yaml: gen.in_dim_mlp is 1200.*300 \\(word2vec\\)"):
        validate_config(data, "x.yaml")
    data["gen"]["in_dim_mlp"] = 900
    assert validate_config(data)["gen"]["in_dim_mlp"] == 900
    data = raw()
    data["dis"]["in_dim_fc"] = 512
    with pytest.raises(ValueError, match="dis.in_dim_fc is 512; expected back.n_classes = 600"):
        validate_config(data, "x.yaml")
    data = raw()
    data["gen"]["hidden_dims_mlp"] = [64, 64]
    with pytest.raises(ValueError, match="gen.dropout_mlp has 5 values"):
        validate_config(data, "x.yaml")
    data = raw()
    del data["dis_scheduler"]["step_size"]
    with pytest.raises(ValueError, match="dis_scheduler.lr_policy is 'lambda'.*'dis_scheduler.step_size'"):
        validate_config(data, "x.yaml")
    data["dis_scheduler"] = {"lr_policy": "constant"}
    assert validate_config(data)["dis_scheduler"] == {"lr_policy": "constant"}


def test_config_is_read_only():
    cfg = load_config(CONFIGS / "voc12.yaml")
    with pytest.raises(TypeError, match="read-only"):
        cfg["seed"] = 1
    with pytest.raises(TypeError, match="read-only"):
        cfg["dis_opt"]["lr"] = 1.0
    with pytest.raises(TypeError, match="read-only"):
        del cfg["top_p"]
    with pytest.raises(TypeError, match="read-only"):
        cfg.source = "other.yaml"
    assert isinstance(cfg["back"]["n_blocks"], tuple)
    plain = cfg.to_dict()
    plain["dis_opt"]["lr"] = 1.0
    assert cfg["dis_opt"]["lr"] == 0.00025


def test_updated_returns_a_new_validated_config():
    cfg = load_config(CONFIGS / "voc12.yaml")
    tiny = cfg.updated({"back.n_blocks": [1, 1, 1, 1], "back.base_width": 8, "back.n_classes": 32,
                        "gen.in_dim_mlp": 632, "gen.out_dim_mlp": 32, "dis.in_dim_fc": 32})
    assert tiny["back"]["n_blocks"] == (1, 1, 1, 1) and cfg["back"]["n_blocks"] == (3, 4, 23, 3)
    with pytest.raises(ValueError, match="gen.in_dim_mlp"):
        cfg.updated({"back.n_classes": 32})


def test_save_load_round_trip(tmp_path):
    for name in ("voc12_finetune.yaml", "configs_st_voc12.yaml"):
        cfg = load_config(CONFIGS / name)
        out = tmp_path / "run" / "configs.yaml"
        save_config(cfg, out)
        again = load_config(out)
        assert again == cfg and again.to_dict() == cfg.to_dict()
        assert list(again.to_dict()) == list(cfg.to_dict())
        assert yaml.safe_load(out.read_text())["update_back"] in ("t", "f")
        assert os.listdir(out.parent) == ["configs.yaml"]
    assert pickle.loads(pickle.dumps(cfg)) == cfg and copy.deepcopy(cfg) == cfg


def test_schema_covers_every_shipped_key():
    known = {key.path for key in SCHEMA}
    for name in SHIPPED:
        cfg = load_config(CONFIGS / name)

        def leaves(node, prefix=""):
            for key, value in node.items():
                if isinstance(value, Config) and f"{prefix}{key}" not in known:
                    yield from leaves(value, f"{prefix}{key}.")
                else:
                    yield f"{prefix}{key}"
        assert set(leaves(cfg)) <= known


def test_reference_doc_is_up_to_date():
    committed = (REPO / "docs" / "config_reference.md").read_text(encoding="utf-8")
    assert committed == config_reference_markdown(), \
        "docs/config_reference.md is stale: run python -m libs.config write-reference docs/config_reference.md"
    for key in SCHEMA:
        assert f"`{key.path}`" in committed
