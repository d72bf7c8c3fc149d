"""Config -> objects. The only place that reads config keys for the model, data, optimizers and schedulers,
so models and the trainer take explicit arguments (design: models never read the config dict)."""
from __future__ import annotations

import os
from typing import Dict

import torch

from libs.config import Config, iter_max, learning_rate
from libs.datasets import (ClassSplits, ZeroShotSegmentation, build_embedding_tables, load_class_splits,
                           load_split_list, load_word_embeddings)
from libs.schedulers import build_scheduler
from libs.trainer import LossWeights, Trainer, backbone_optimizer, make_optimizer
from models.cagnet import CaGNet, build_cagnet


def build_splits(cfg: Config) -> ClassSplits:
    return load_class_splits(cfg["datadir"], cfg["dataset"], num_unseen=cfg["num_unseen"],
                             out_dim_cls=cfg.value("dis.out_dim_cls"))


def build_model(cfg: Config, splits: ClassSplits) -> CaGNet:
    """The model with its embedding tables built from the word-vector files (spec §7)."""
    embeddings = load_word_embeddings(cfg["datadir"], cfg["dataset"], cfg["embedding"], cfg["emb_without_normal"])
    feat_dim = cfg.value("back.n_classes")
    em_vis, em_all = build_embedding_tables(embeddings, splits, expected_dim=cfg.value("gen.in_dim_mlp") - feat_dim)
    return build_cagnet(
        em_vis, em_all, cfg.value("dis.out_dim_cls"), feat_dim=feat_dim, n_blocks=cfg.value("back.n_blocks"),
        base_width=cfg.value("back.base_width"), atrous_rates=cfg.value("back.aspp_rates"),
        context_width=cfg.value("back.context_width"), gen_hidden=cfg.value("gen.hidden_dims_mlp"),
        gen_dropout=cfg.value("gen.dropout_mlp"), dis_hidden=cfg.value("dis.out_dim_fc"),
        dis_dropout=cfg.value("dis.drop_fc"), ignore_index=cfg.value("ignore_index"))


def _dataset(cfg: Config, splits: ClassSplits, split: str, train: bool, seed: int) -> ZeroShotSegmentation:
    mean = cfg["IMAGE"]["MEAN"]
    return ZeroShotSegmentation(
        cfg["ROOT"], load_split_list(cfg["datadir"], cfg["dataset"], split), splits, train=train,
        mean_bgr=(mean["B"], mean["G"], mean["R"]), crop_size=cfg.value("IMAGE.SIZE.TRAIN"),
        base_size=cfg.value("IMAGE.SIZE.BASE"), warp=cfg["WARP_IMAGE"], scale_range=cfg.value("SCALE_RANGE"),
        ignore_index=cfg.value("ignore_index"), seed=seed)


def build_train_dataset(cfg: Config, splits: ClassSplits, seed: int) -> ZeroShotSegmentation:
    return _dataset(cfg, splits, "train", True, seed)


def build_test_dataset(cfg: Config, splits: ClassSplits) -> ZeroShotSegmentation:
    return _dataset(cfg, splits, "test", False, 0)


def test_loader(dataset, cfg: Config, device: torch.device) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.value("BATCH_SIZE.TEST"), shuffle=False,
                                       num_workers=min(cfg["NUM_WORKERS"], os.cpu_count() or 1),
                                       pin_memory=device.type == "cuda")


def loss_weights(cfg: Config) -> LossWeights:
    return LossWeights(**{name: float(cfg[f"lambda_{name}"]) for name in LossWeights.__dataclass_fields__})


def build_trainer(cfg: Config, model: CaGNet, splits: ClassSplits, schedule: str, grad_sync=None) -> Trainer:
    """Optimizers with the active schedule's learning rates (spec §4) and their schedulers."""
    max_iter = iter_max(cfg, schedule)
    back_opt, dis_opt, gen_opt = cfg["back_opt"], cfg["dis_opt"], cfg["gen_opt"]
    optimizers = {
        "back": backbone_optimizer(model, back_opt["OPTIMIZER"], learning_rate(cfg, "back", schedule),
                                   back_opt["WEIGHT_DECAY"], back_opt["MOMENTUM"], back_opt.value("lr_multipliers")),
        "dis": make_optimizer(dis_opt["OPTIMIZER"], [{"params": [p for p in model.dis.parameters()]}],
                              learning_rate(cfg, "dis", schedule), dis_opt["weight_decay"]),
        "gen": make_optimizer(gen_opt["OPTIMIZER"], [{"params": [p for p in model.gen.parameters()]}],
                              learning_rate(cfg, "gen", schedule), gen_opt["weight_decay"]),
    }
    schedulers: Dict[str, object] = {}
    for net, optimizer in optimizers.items():
        sched = cfg[f"{net}_scheduler"]
        # Faithful to the original: the poly scheduler's init/max come from the active schedule's
        # lr and ITER_MAX, whatever back_scheduler.init_lr*/max_iter* say.
        schedulers[net] = build_scheduler(
            optimizer, sched["lr_policy"], init_lr=learning_rate(cfg, net, schedule), max_iter=max_iter,
            power=sched.value("power", 0.9), lr_decay_iter=sched.value("lr_decay_iter", 1),
            start_decay_iter=sched.value("start_decay_iter", 0), step_size=sched.value("step_size", 1),
            gamma=sched.value("gamma", 1.0))
    return Trainer(model, optimizers, schedulers, loss_weights(cfg), gan_type=cfg["gan_type"],
                   critic_updates=cfg["criticUpdates"], update_back=cfg["update_back"],
                   num_seen=splits.num_seen, num_unseen=splits.num_unseen, unseen_rate=cfg["gen_unseen_rate"],
                   top_p=cfg["top_p"], content_loss=cfg["content_loss"], grad_sync=grad_sync)
