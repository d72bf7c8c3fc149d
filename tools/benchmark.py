"""Speed benchmark of the training and evaluation steps on synthetic inputs (no dataset needed).

    python -m tools.benchmark                           # paper-size model, VOC shapes, best device
    python -m tools.benchmark --tiny --device cpu       # seconds on a laptop

Measures, per call: a step-1 iteration (batch N, crop, backbone trained), a step-1 iteration with the
backbone frozen (mixed), a step-2 iteration, and test-time prediction on a 513x513 image; and, to show what
the engineering changes buy, the same step-1 iteration done the original's way (every loss back-propagated
through the whole graph, gradients of other networks discarded), step 2 with the original's backbone pass on
the last batch, and the test forward with the discarded pyramid. Results are printed and written as JSON (--json).
"""
import argparse
import json
import time

import torch

from libs.engine.trainers.cagnet import CaGNetTrainer, LossWeights, backbone_optimizer
from libs.optimizers import make_optimizer
from libs.schedulers import build_scheduler
from models.cagnet import build_cagnet
from models.initialization import init_weights

TINY = dict(feat_dim=64, n_blocks=(1, 1, 1, 1), base_width=8, atrous_rates=(1, 2, 3, 4), context_width=32,
            gen_hidden=(128, 96), gen_dropout=(0.1, 0.3), dis_hidden=128)


class WholeGraphTrainer(CaGNetTrainer):
    """The original's gradient traffic: each loss back-propagated through the whole graph (all parameters),
    the gradients that do not belong to the stepped network thrown away. Same updates, more work."""

    def backward(self, net, loss, retain=True):
        everything = [p for p in self.model.parameters() if p.requires_grad]
        for p in everything:
            p.grad = None
        if loss.requires_grad:
            loss.backward(retain_graph=retain)
        keep = {id(p) for p in self.params[net]}
        for p in everything:
            if id(p) not in keep:
                p.grad = None
            elif p.grad is None:
                p.grad = torch.zeros_like(p)


def build(args, device):
    seen, unseen = 15, 5
    em_all = torch.nn.functional.normalize(torch.randn(seen + unseen, 600), dim=1)
    em_vis = torch.zeros(256, 600)
    em_vis[:seen] = em_all[:seen]
    model = build_cagnet(em_vis, em_all, seen + unseen + 1, **(TINY if args.tiny else {}))
    init_weights(model, "kaiming")
    return model.to(device)


def trainer_for(cls, model, update_back):
    opts = {"back": backbone_optimizer(model, "sgd", 2.5e-4, 5e-4),
            "dis": make_optimizer("adam", [{"params": list(model.dis.parameters())}], 2.5e-4, 5e-4),
            "gen": make_optimizer("adam", [{"params": list(model.gen.parameters())}], 2e-4, 0.0)}
    scheds = {k: build_scheduler(o, "constant", init_lr=o.param_groups[0]["lr"]) for k, o in opts.items()}
    weights = LossWeights(D_cls_fake=0.25 if not update_back else 0.0, D_cls_fake_transfer=0.125)
    return cls(model, opts, scheds, weights, num_seen=15, num_unseen=5, unseen_rate=9.0, update_back=update_back)


def timed(fn, device, repeats, warmup=2, memory=None, name=None):
    """Mean seconds per call; with memory (a dict) on CUDA also the peak GiB allocated during the calls."""
    for _ in range(warmup):           # includes cuDNN's algorithm search, kept out of the memory peak
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeats
    if memory is not None and device.type == "cuda":
        memory[name] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--tiny", action="store_true", help="a small model (CPU-friendly)")
    parser.add_argument("--batch", type=int, default=None, help="training batch (default 8; tiny: 4)")
    parser.add_argument("--crop", type=int, default=None, help="training crop (default 368; tiny: 96)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    batch = args.batch or (4 if args.tiny else 8)
    crop = args.crop or (96 if args.tiny else 368)
    test_size = 129 if args.tiny else 513
    torch.manual_seed(0)
    model = build(args, device)
    images = torch.randn(batch, 3, crop, crop, device=device)
    labels = torch.randint(0, 15, (batch, crop, crop), device=device)
    labels[:, : crop // 3] = 255                     # a third of the pixels unlabelled, as in VOC
    test_image = torch.randn(1, 3, test_size, test_size, device=device)
    h, w = model.feature_shape(crop, crop)

    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "model": "tiny" if args.tiny else "paper (DeepLabv2-ResNet101, F=600)", "batch": batch, "crop": crop,
               "torch": torch.__version__}
    memory = {}

    def measure(name, fn):
        results[name + "_s"] = timed(fn, device, args.repeats, memory=memory, name=name)

    ours = trainer_for(CaGNetTrainer, model, True)
    measure("step1", lambda: ours.step1(images, labels))
    original = trainer_for(WholeGraphTrainer, model, True)
    measure("step1_whole_graph_backward", lambda: original.step1(images, labels))
    frozen = trainer_for(CaGNetTrainer, model, False)
    measure("step1_frozen_backbone", lambda: frozen.step1(images, labels))
    measure("step2", lambda: frozen.step2(batch * h * w))

    def step2_with_backbone_pass():
        # The original ran the three-scale backbone on the last batch only to read N, h, w.
        with torch.no_grad():
            model.eval()
            model.back.pyramid(images, model.back(images).h0, select=lambda out: out.h0)
        frozen.step2(batch * h * w)
    measure("step2_with_backbone_pass", step2_with_backbone_pass)
    model.eval()
    with torch.no_grad():
        measure("predict", lambda: model.predict(test_image))
        measure("predict_with_pyramid",
                lambda: model.back.pyramid(test_image, model.back(test_image).h0, select=lambda out: out.h0))
    for name, gib in memory.items():
        results[name + "_peak_gib"] = gib
    for key, value in results.items():
        print(f"{key:32s} {value:.4f}" if isinstance(value, float) else f"{key:32s} {value}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
