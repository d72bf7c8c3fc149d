"""The config schema: every key of the original CaGNet configs and our optional additions, one row each.

A row gives the dotted path, the type, whether it is required, its default and a one-line meaning. Choice lists
come from the modules that own them (losses, optimizers, schedulers, embeddings, initialisation, schedules), so a
new choice is added in one place. `libs.config.validate` checks files against this table; `libs.config.reference`
renders it as docs/config_reference.md.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from libs.datasets.embeddings import EMBEDDING_DIMS
from libs.engine.evaluation import EVAL_MODES
from libs.engine.methods import DEFAULT_METHOD, METHOD_NAMES
from libs.engine.precision import AMP_MODES
from libs.engine.schedules import SCHEDULES
from libs.losses import CONTENT_LOSSES, GAN_TYPES, GMMN_SIGMAS
from libs.optimizers import OPTIMIZERS
from libs.schedulers import PHASES, POLICIES
from models.initialization import INIT_SCHEMES
from models.zs3net import NOISE_LAWS

# Networks whose optimizer and scheduler sections the CaGNet configs carry.
NETS = ("dis", "gen", "back")

_NO_DEFAULT = object()


@dataclass(frozen=True)
class Key:
    """One schema row. kind: int, float, str, bool, flag ('t'/'f' or bool), choice, int_list, float_list, any."""
    path: str
    kind: str
    doc: str
    required: bool = False
    default: Any = _NO_DEFAULT
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    length: int | None = None
    status: str = ""          # '' (original key), 'new', 'dead', 'schedule', 'policy'
    policies: tuple = ()      # for status 'policy': the lr_policy values that need this key
    methods: tuple = ()       # the methods that read this key (empty: every method); a required key is
                              # required only in configs of these methods

    @property
    def has_default(self) -> bool:
        return self.default is not _NO_DEFAULT

    def required_for(self, method: str) -> bool:
        return self.required and (not self.methods or method in self.methods)


def _req(path, kind, doc, **kw):
    return Key(path, kind, doc, required=True, **kw)


def _new(path, kind, default, doc, **kw):
    return Key(path, kind, doc, default=default, status="new", **kw)


def _dead(path, doc):
    return Key(path, "any", f"No effect (kept so original configs load): {doc}", status="dead")


def _sched(path, kind, doc, **kw):
    return Key(path, kind, doc, status="schedule", **kw)


def _policy(path, kind, doc, policies, **kw):
    return Key(path, kind, doc, status="policy", policies=policies, **kw)


def _optimizer_keys(net: str, what: str, decay: tuple) -> list:
    keys = [_req(f"{net}_opt.OPTIMIZER", "choice", f"Optimizer of the {what}.", choices=OPTIMIZERS)]
    for schedule in SCHEDULES.values():
        keys.append(_sched(schedule.lr_key(net), "float",
                           f"Base learning rate of the {what} under --schedule {schedule.name}.", minimum=0.0))
    keys.extend(decay)
    return keys


def _scheduler_keys(net: str, what: str) -> list:
    return [
        _req(f"{net}_scheduler.lr_policy", "choice",
             f"Learning-rate policy of the {what}: poly (per-iteration polynomial decay), lambda (constant until "
             "start_decay_iter, then x gamma every step_size), step (StepLR) or constant.",
             choices=POLICIES),
        _policy(f"{net}_scheduler.power", "float", "Exponent of the poly decay (1 - k/max)^power.", ("poly",),
                minimum=0.0),
        _policy(f"{net}_scheduler.lr_decay_iter", "int",
                "Poly policy updates the rate only every this many scheduler steps.", ("poly",), minimum=1),
        _policy(f"{net}_scheduler.start_decay_iter", "int",
                "Lambda policy: the rate stays at its base value for this many scheduler steps.", ("lambda",),
                minimum=0),
        _policy(f"{net}_scheduler.step_size", "int",
                "Lambda/step policy: multiply the rate by gamma every this many scheduler steps.", ("lambda", "step"),
                minimum=1),
        _policy(f"{net}_scheduler.gamma", "float", "Lambda/step policy: decay factor.", ("lambda", "step"),
                minimum=0.0),
    ]


_LAMBDAS = [
    ("lambda_D_gp", "Weight of the gradient penalty in the classifier's GAN loss (used only by gan_type wgan-gp)."),
    ("lambda_D_cls_real", "Classifier loss weight of the real-feature classification (step 1)."),
    ("lambda_D_cls_fake", "Classifier loss weight of the fake-feature classification (step 1)."),
    ("lambda_D_cls_fake_transfer", "Classifier loss weight of the fake-feature classification (step 2)."),
    ("lambda_B_KLD", "Backbone loss weight of the contextual latent code's KL divergence."),
    ("lambda_B_cls", "Backbone loss weight of the real-feature classification."),
    ("lambda_G_Content", "Generator loss weight of the content (MMD) loss."),
    ("lambda_G_GAN", "Generator loss weight of the adversarial loss."),
    ("lambda_G_cls", "Generator loss weight of the fake-feature classification (step 1)."),
    ("lambda_G_cls_transfer", "Generator loss weight of the fake-feature classification (step 2)."),
]

SCHEMA: tuple = tuple([
    _req("BATCH_SIZE.TRAIN", "int", "Training batch size.", minimum=1),
    _req("BATCH_SIZE.TEST", "int", "Evaluation batch size.", minimum=1),
    _req("SPLIT.TRAIN", "choice", "Training split; `train` reads split/train_list.npy (the only value).",
         choices=("train",)),
    _req("SPLIT.TEST", "choice", "Test split; `novel` reads split/test_list.npy, scored on seen + unseen classes "
         "(the only value).", choices=("novel",)),
    _req("NUM_WORKERS", "int", "DataLoader worker processes.", minimum=0),
    _req("DATAMODE", "choice", "Loader class; the zero-shot loader is the only one.", choices=("LoaderZLS",)),
    _req("IMAGE.MEAN.R", "float", "Red channel mean subtracted from the image (no std division)."),
    _req("IMAGE.MEAN.G", "float", "Green channel mean subtracted from the image."),
    _req("IMAGE.MEAN.B", "float", "Blue channel mean subtracted from the image."),
    _req("IMAGE.SIZE.TRAIN", "int", "Side of the square random training crop.", minimum=1),
    Key("IMAGE.SIZE.TEST", "any", "No effect (kept so original configs load): the original passes it to the test "
        "loader as a crop size, but the test loader never crops (test input is IMAGE.SIZE.BASE, 513).",
        status="dead"),
    _new("IMAGE.SIZE.BASE", "int", 513, "Side every image and label is first resized to (warped to a square when "
         "WARP_IMAGE, else longer side); test images are evaluated at this size.", minimum=1),
    _req("WARP_IMAGE", "bool", "True: resize to IMAGE.SIZE.BASE x IMAGE.SIZE.BASE ignoring aspect ratio; False: "
         "longer side to IMAGE.SIZE.BASE."),
    _new("SCALE_RANGE", "float_list", (0.5, 1.5), "Training scale augmentation: factor drawn uniformly from "
         "[low, high] after the base resize.", length=2, minimum=0.0),
    _req("ROOT", "str", "Folder with images/<subdir>/ and annotations/<subdir>/."),
    _req("datadir", "str", "Folder holding <dataset>/split, labels_refined.txt and word_vectors."),
    _req("save_path", "str", "Output root: checkpoints, logs and the config copy go to <save_path>/<dataset>/"
         "<experimentid>/."),
    _req("dataset", "str", "Dataset name (voc12, context, cocostuff): sub-folder of datadir and save_path."),
    _req("num_unseen", "int", "Number of unseen classes U (must match split/novel_cls.npy).", minimum=1),
    _req("embedding", "choice", "Class word embedding: word2vec (300-d), fasttext (300-d) or fastnvec (fastText then "
         "word2vec, 600-d).", choices=tuple(EMBEDDING_DIMS)),
    _new("method", "choice", DEFAULT_METHOD, "Method to train and evaluate (the method table, "
         "libs/engine/methods.py): cagnet (CaGNet), spnet (SPNet; SPNet-c = spnet evaluated with calibration, "
         "docs/baselines.md). Keys a method does not read (e.g. gen/dis for spnet) are not required in its "
         "configs.", choices=METHOD_NAMES),
    _req("emb_without_normal", "bool", "True: skip the L2 normalisation of each class embedding."),
    _req("display_interval", "int", "Print the running losses every this many iterations.", minimum=1),
    _req("log_interval", "int", "Append the running losses to the log file every this many iterations.", minimum=1),
    _req("snapshot", "int", "Save a checkpoint and evaluate on the test set every this many iterations.", minimum=1),
    _new("keep_last", "int", 0, "Keep only the newest this many checkpoints of a schedule: older ones are deleted "
         "after each successful save (0: keep all, as the original).", minimum=0),
    _sched("ITER_MAX", "int", "Iterations of --schedule step1.", minimum=1),
    _new("ITER_SIZE", "int", 1, "Gradient accumulation (spnet only, SPNet's ITER_SIZE): an iteration loads "
         "BATCH_SIZE.TRAIN x ITER_SIZE images and back-propagates them in ITER_SIZE chunks of BATCH_SIZE.TRAIN, "
         "each chunk's loss divided by ITER_SIZE, then steps once.", minimum=1, methods=("spnet",)),
    _sched("ITER_MAX_TRANSFER", "int", "Iterations of --schedule mixed (finetuning).", minimum=1),
    _sched("ITER_MAX_ST", "int", "Iterations of --schedule st (self-training).", minimum=1),
    _sched("ITER_MAX_ST_TRANSFER", "int", "Iterations of --schedule st_mixed.", minimum=1),
    *_optimizer_keys("dis", "classifier (discriminator)", (
        _req("dis_opt.weight_decay", "float", "L2 weight decay of the classifier optimizer.", minimum=0.0),)),
    *_optimizer_keys("back", "backbone (groups 1x/5x/10x/20x of the base rate)", (
        _req("back_opt.WEIGHT_DECAY", "float", "L2 weight decay of the backbone's conv weights (ASPP biases: 0).",
             minimum=0.0),
        _req("back_opt.MOMENTUM", "float", "SGD momentum of the backbone optimizer.", minimum=0.0),
        _new("back_opt.lr_multipliers", "float_list", (1.0, 5.0, 10.0, 20.0), "Learning-rate multipliers of the "
             "backbone groups ResNet convs / contextual convs / ASPP weights / ASPP biases.", length=4,
             minimum=0.0))),
    *_optimizer_keys("gen", "generator", (
        _req("gen_opt.weight_decay", "float", "L2 weight decay of the generator optimizer.", minimum=0.0),)),
    *_scheduler_keys("dis", "classifier"),
    *_scheduler_keys("back", "backbone"),
    _dead("back_scheduler.lr_st", "a misspelling of init_lr_st in configs_st_voc12.yaml."),
    *[_dead(f"back_scheduler.init_lr{s.suffix}", "the active schedule's back_opt rate is used instead.")
      for s in SCHEDULES.values()],
    *[_dead(f"back_scheduler.max_iter{s.suffix}", "the active schedule's ITER_MAX* is used instead.")
      for s in SCHEDULES.values()],
    *_scheduler_keys("gen", "generator"),
    _req("criticUpdates", "int", "Classifier updates per iteration; extra ones back-propagate only the GAN loss.",
         minimum=1),
    _req("update_back", "flag", "Train the backbone (`t`) or freeze it (`f`); booleans accepted, read as a bool."),
    _req("gen_unseen_rate", "float", "Step 2 samples unseen classes with prior 1 + this (seen classes: 1).",
         minimum=0.0),
    _req("interval_step1", "int", "Mixed schedules: step-1 iterations per cycle.", minimum=0),
    _req("interval_step2", "int", "Mixed schedules: step-2 iterations per cycle.", minimum=0),
    _req("first", "choice", "Which step a mixed cycle starts with (step2 first cannot run: no batch loaded yet).",
         choices=PHASES),
    _req("top_p", "int", "Self-training: a void pixel gets the best unseen class among its top_p predictions.",
         minimum=1),
    _req("init", "choice", "Weight initialisation of every conv/linear layer before init_model is loaded.",
         choices=INIT_SCHEMES),
    Key("init_model", "str", "Checkpoint loaded at the start of a fresh run (`none`: nothing); --init_model "
        "overrides it; the self-training configs have none, so --init_model is needed there."),
    _dead("init_back", "backbone checkpoint path of the self-training configs."),
    _dead("init_dis", "classifier checkpoint path of the self-training configs."),
    _dead("init_gen", "generator checkpoint path of the self-training configs."),
    _req("gen.in_dim_mlp", "int", "Generator input channels = embedding dim + back.n_classes.", minimum=1),
    _new("gen.hidden_dims_mlp", "int_list", (1024, 960, 864, 784, 720), "Generator hidden layer widths "
         "(1x1 convs, LeakyReLU 0.2).", minimum=1),
    _new("gen.dropout_mlp", "float_list", (0.1, 0.1, 0.3, 0.5, 0.5), "Dropout after each generator hidden layer "
         "(one per hidden width).", minimum=0.0, maximum=1.0),
    _req("gen.out_dim_mlp", "int", "Generator output channels (= feature dim back.n_classes).", minimum=1),
    _req("dis.in_dim_fc", "int", "Classifier input channels (= feature dim back.n_classes).", minimum=1),
    _req("dis.out_dim_fc", "int", "Classifier hidden (fc) width.", minimum=1),
    _req("dis.norm_fc", "choice", "Normalisation in the classifier trunk (only none is implemented).",
         choices=("none",)),
    _req("dis.activ_fc", "choice", "Activation in the classifier trunk (only relu is implemented).",
         choices=("relu",)),
    _req("dis.drop_fc", "float", "Dropout after the classifier trunk.", minimum=0.0, maximum=1.0),
    _req("dis.out_dim_cls", "int", "Classifier outputs C = seen + unseen + 1 (the last channel is never a target).",
         minimum=3),
    _req("back.n_classes", "int", "Feature dim F: ASPP output channels = latent-code dim.", minimum=1),
    _dead("back.contextual", "the contextual module is always on."),
    _new("back.n_blocks", "int_list", (3, 4, 23, 3), "Bottleneck blocks per ResNet stage ((3, 4, 23, 3) = "
         "ResNet-101).", length=4, minimum=1),
    _new("back.base_width", "int", 64, "Stem width; stage widths are base_width x 1/2/4/8 (mid) and x4 that "
         "(out).", minimum=1),
    _new("back.aspp_rates", "int_list", (6, 12, 18, 24), "Dilation (= padding) of each summed ASPP branch.",
         minimum=1),
    _new("back.context_width", "int", 256, "Channels of the contextual module's dilated convs.", minimum=1),
    _new("back.bn_calibration_batches", "int", 0, "For a from-scratch backbone: estimate the frozen BatchNorm "
         "statistics from this many training batches before training (0: keep the loaded statistics).", minimum=0),
    _dead("gen_version", "generator variant selector of an older code version."),
    _dead("dis_version", "classifier variant selector of an older code version."),
    _dead("back_version", "backbone variant selector of an older code version."),
    _dead("noSBD_ZS3", "dataset variant switch of an older code version."),
    _dead("load_to", "checkpoint-loading switch of an older code version."),
    _req("ignore_index", "int", "Label value ignored by every loss and metric.", minimum=0),
    _req("loss_count", "int", "Number of logged loss slots (must be 8).", choices=(8,)),
    *[_req(name, "float", doc, minimum=0.0) for name, doc in _LAMBDAS],
    _req("content_loss", "choice", "Generator content loss (the paper uses MMDLoss).",
         choices=CONTENT_LOSSES),
    _req("gan_type", "choice", "GAN loss (lsgan is the original's L1 on sigmoid scores).",
         choices=GAN_TYPES),
    _new("amp", "choice", "off", "Mixed precision of training and evaluation (docs/method.md §8.7): off = float32 "
         "(the faithful numbers), bf16 = bfloat16 autocast (CPU with AVX512-BF16/AMX, or CUDA), fp16 = float16 "
         "autocast with a gradient scaler (CUDA); --amp overrides it.", choices=AMP_MODES),
    _new("channels_last", "bool", False, "Run the convolutions in the channels-last (NHWC) memory layout (faster "
         "with oneDNN on the CPU and with cuDNN's tensor cores; same maths, other float rounding); "
         "--channels_last sets it."),
    _new("seed", "int", 0, "Seed of python, numpy and torch RNGs (a --seed flag, if given, takes precedence).",
         minimum=0),
    _new("eval_mode", "choice", "feature", "Evaluation protocol (docs/method.md §7): feature = the original's, argmax "
         "at feature resolution (65x65) against the label resized nearest to it; warped = logits upsampled "
         "bilinearly to the warped network input (513x513) and scored against the warped label (SPNet's "
         "protocol); full = the same logits upsampled bilinearly to each image's original size and scored against its "
         "raw label (docs/method.md §7.6); --eval_mode overrides it.", choices=EVAL_MODES),
    _new("calibration", "float", 0.0, "Calibrated stacking at evaluation (SPNet-c): gamma subtracted from the seen "
         "classes' softmax probabilities before the argmax over the seen and unseen classes; 0 = the plain argmax "
         "over every classifier channel (the original's); --calibrate overrides it.", minimum=0.0, maximum=1.0),
    # ---- ZS3Net (method zs3net, docs/baselines.md): zs3_* keys, read by trainers/zs3net.py only ----
    _new("zs3_noise_dim", "int", 600, "ZS3Net: noise channels of the GMMN generator's input [embedding ; noise] "
         "(ZS3's rule: = embedding dim).", minimum=1),
    _new("zs3_gen_hidden", "int", 256, "ZS3Net: hidden width of the GMMN generator (Linear, LeakyReLU 0.2, "
         "dropout, Linear).", minimum=1),
    _new("zs3_gen_dropout", "float", 0.5, "ZS3Net: dropout after the GMMN generator's hidden layer.", minimum=0.0,
         maximum=1.0),
    _new("zs3_noise", "choice", "uniform", "ZS3Net: law of the generator's noise: uniform = U[0, 1) (ZS3's code), "
         "gaussian = N(0, 1) (ZS3's paper).", choices=NOISE_LAWS),
    _new("zs3_mmd_sigmas", "float_list", GMMN_SIGMAS, "ZS3Net: bandwidths sigma of the GMMN loss's kernels "
         "exp(-d^2 / (2 sigma)); ZS3's code: 2, 5, 10, 20, 40, 80 (its paper and CaGNet: 60 for 80).", minimum=0.0),
    _new("zs3_mmd_samples", "int", 128, "ZS3Net: real pixels drawn (with replacement) per image and seen class for "
         "one GMMN step; as many fakes are generated.", minimum=1),
    _new("zs3_pseudo_label_percent", "float", 25.0, "ZS3Net+ST (--schedule st / st_mixed): keep the top this % "
         "most confident unseen pseudo-labels per image and unseen class (VOC 25, Context and COCO-Stuff 75).",
         minimum=0.0, maximum=100.0),
    _new("zs3_reset_classifier", "bool", True, "ZS3Net: at the start of --schedule mixed / st_mixed redraw the "
         "classifier's weight and bias from U[0, 1) (ZS3's random_last_layer); False keeps the loaded ones."),
])

# Required keys that only CaGNet reads: an spnet config may leave them out (`Key.methods`).
_CAGNET_ONLY_PREFIXES = ("dis_opt.", "gen_opt.", "dis_scheduler.", "gen_scheduler.", "gen.", "dis.", "lambda_")
_CAGNET_ONLY_KEYS = ("criticUpdates", "update_back", "gen_unseen_rate", "interval_step1", "interval_step2", "first",
                     "top_p", "loss_count", "content_loss", "gan_type")
SCHEMA = tuple(replace(key, methods=("cagnet",))
               if key.required and (key.path.startswith(_CAGNET_ONLY_PREFIXES) or key.path in _CAGNET_ONLY_KEYS)
               else key for key in SCHEMA)

_KEYS = {key.path: key for key in SCHEMA}
_SECTIONS = {path.rsplit(".", i)[0] for path in _KEYS for i in range(1, path.count(".") + 1)}
