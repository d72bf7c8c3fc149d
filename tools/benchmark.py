"""Speed of the training and test calls against the device's own floor, on synthetic inputs (no dataset needed).

    python -m tools.benchmark --device cpu --threads 2 --batch 2 --crop 161 --amp off bf16 --json b.json
    python -m tools.benchmark --device cuda --amp off bf16 fp16 --json gpu.json     # batch 8, crop 368
    python -m tools.benchmark --tiny --device cpu                                    # seconds, a small model

Per --amp mode the device supports, it times (median and min of --repeats after --warmup calls): a step-1
iteration with the backbone trained (`step1`) and frozen (`step1_frozen`, mixed schedules), a step-2 iteration
(`step2`, N*h*w generated pixels) and test-time prediction of one image at 321x321 and 513x513 (`predict_321`,
`predict_513`). It counts each call's floating-point operations (torch.utils.flop_counter: convolutions and
matrix products, forward and backward) and measures in the same run the device's sustained rate of a 3x3
convolution and of a matrix product per precision, then reports the achieved GFLOP/s and the share of the floor:
`pct_of_rate` = 100 * (conv FLOPs / conv rate + other FLOPs / matmul rate) / median time, i.e. how close the call
comes to the time its FLOPs would take at the measured rates. Peak memory: the peak resident set size during the
calls on the CPU (VmHWM, reset per call), the peak allocated memory on CUDA.

JSON: {"device", "cpu_flags", "threads", "rate_gflops": {"conv3x3": {amp: GFLOP/s}, "matmul": {amp: GFLOP/s}},
"calls": [{"name", "amp", "batch", "size", "median_s", "min_s", "gflop", "pct_of_rate", "peak_mem_mib"}]}, plus
"loader" with --loader, which also measures the training loader's throughput (images/s, JPEG decoding and
augmentation of VOC-sized images) against the step-1 time: whether a device waits for data.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager

if not __package__:  # `python tools/<name>.py`: the repository root on the path, as `python -m tools.<name>` has it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from libs.engine.precision import AMP_MODES, Precision
from libs.engine.trainers.cagnet import CaGNetTrainer, LossWeights, backbone_optimizer
from libs.optimizers import make_optimizer
from libs.schedulers import build_scheduler
from models.cagnet import build_cagnet
from models.initialization import init_weights

TINY = dict(feat_dim=64, n_blocks=(1, 1, 1, 1), base_width=8, atrous_rates=(1, 2, 3, 4), context_width=32,
            gen_hidden=(128, 96), gen_dropout=(0.1, 0.3), dis_hidden=128)
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
             "amx_fp16", "amx_int8")
CALLS = ("step1", "step1_frozen", "step2", "predict_321", "predict_513")


# ---- the device -----------------------------------------------------------------------------------------------
def cpu_info():
    """(model name, the CPU_FLAGS this CPU has) from /proc/cpuinfo; (platform.processor(), []) elsewhere."""
    try:
        with open("/proc/cpuinfo") as handle:
            text = handle.read()
    except OSError:
        return platform.processor() or "cpu", []
    name, flags = "cpu", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            name = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    return name, [f for f in CPU_FLAGS if f in flags]


def supported_amp(device: torch.device, flags) -> list:
    """The --amp modes with a fast path on this device: float16 on the CPU needs AVX512-FP16 or AMX-FP16."""
    if device.type == "cuda":
        return list(AMP_MODES) if torch.cuda.is_bf16_supported() else ["off", "fp16"]
    return ["off", "bf16"] + (["fp16"] if {"avx512_fp16", "amx_fp16"} & set(flags) else [])


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def peak_memory(device, out: dict):
    """Peak MiB during the block: allocated on CUDA; resident set (VmHWM, reset first) on the CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            pass
    yield
    if device.type == "cuda":
        out["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        return
    out["peak_mem_mib"] = None
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    out["peak_mem_mib"] = int(line.split()[1]) / 1024
    except OSError:
        pass


def seconds(fn, device, repeats, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def flops(fn):
    """(convolution FLOPs, other FLOPs) of one call, forward and backward."""
    with FlopCounterMode(display=False) as counter:
        fn()
    per_op = counter.get_flop_counts().get("Global", {})
    conv = sum(v for op, v in per_op.items() if "convolution" in str(op))
    return conv, sum(per_op.values()) - conv


def device_rates(device, precision: Precision, repeats: int):
    """Sustained GFLOP/s of a 3x3 convolution (256 -> 256 channels, 2 x 64 x 64, the better of NCHW and NHWC)
    and of a 2048^3 matrix product, in the precision's autocast."""
    x = torch.randn(2, 256, 64, 64, device=device)
    w = torch.randn(256, 256, 3, 3, device=device)
    conv_flops = 2 * 2 * 256 * 256 * 9 * 64 * 64
    best = 0.0
    for layout in (torch.contiguous_format, torch.channels_last):
        xl, wl = x.contiguous(memory_format=layout), w.contiguous(memory_format=layout)
        with precision.autocast():
            t = min(seconds(lambda: F.conv2d(xl, wl, padding=1), device, repeats + 2, 2))
        best = max(best, conv_flops / t / 1e9)
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    with precision.autocast():
        t = min(seconds(lambda: a @ b, device, repeats + 2, 2))
    return {"conv3x3": best, "matmul": 2 * 2048 ** 3 / t / 1e9}


# ---- the model and its calls ------------------------------------------------------------------------------------
def build(tiny: bool, device, channels_last: bool):
    seen, unseen = 15, 5
    em_all = F.normalize(torch.randn(seen + unseen, 600), dim=1)
    em_vis = torch.zeros(256, 600)
    em_vis[:seen] = em_all[:seen]
    model = build_cagnet(em_vis, em_all, seen + unseen + 1, **(TINY if tiny else {}))
    init_weights(model, "kaiming")
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def trainer_for(model, update_back: bool, precision: Precision, parallel=None) -> CaGNetTrainer:
    """VOC step-1 (update_back) or finetuning (frozen backbone) settings; constant rates."""
    opts = {"back": backbone_optimizer(model, "sgd", 2.5e-4, 5e-4),
            "dis": make_optimizer("adam", [{"params": list(model.dis.parameters())}], 2.5e-4, 5e-4),
            "gen": make_optimizer("adam", [{"params": list(model.gen.parameters())}], 2e-4, 0.0)}
    scheds = {k: build_scheduler(o, "constant", init_lr=o.param_groups[0]["lr"]) for k, o in opts.items()}
    weights = LossWeights() if update_back else LossWeights(D_cls_real=0.75, D_cls_fake=0.25,
                                                             D_cls_fake_transfer=0.125)
    return CaGNetTrainer(model, opts, scheds, weights, num_seen=15, num_unseen=5, unseen_rate=9.0,
                         update_back=update_back, precision=precision, parallel=parallel)


def calls(model, precision, device, batch, crop):
    images = torch.randn(batch, 3, crop, crop, device=device)
    labels = torch.randint(0, 15, (batch, crop, crop), device=device)
    labels[:, : crop // 3] = 255                     # a third of the pixels unlabelled, as in VOC
    h, w = model.feature_shape(crop, crop)
    trained, frozen = trainer_for(model, True, precision), trainer_for(model, False, precision)

    def predict(size):
        image = torch.randn(1, 3, size, size, device=device)

        def run():
            model.eval()
            with torch.no_grad(), precision.autocast():
                model.predict(image)
        return run

    return {"step1": ((lambda: trained.step1(images, labels)), batch, crop),
            "step1_frozen": ((lambda: frozen.step1(images, labels)), batch, crop),
            "step2": ((lambda: frozen.step2(batch * h * w)), batch, crop),
            "predict_321": (predict(321), 1, 321),
            "predict_513": (predict(513), 1, 513)}


def loader_throughput(crop: int, workers: int, batch: int, images: int = 48):
    """Images/s of the training loader on VOC-sized synthetic JPEG/PNG pairs (500x375, the real on-disk layout)."""
    import cv2
    import numpy as np
    from PIL import Image

    from libs.datasets import ZeroShotSegmentation
    from libs.datasets.splits import build_class_splits
    from libs.datasets.stream import BatchStream
    with tempfile.TemporaryDirectory() as root:
        for kind in ("images", "annotations"):
            os.makedirs(os.path.join(root, kind, "train"))
        rng = np.random.default_rng(0)
        for i in range(images):
            cv2.imwrite(os.path.join(root, "images", "train", f"{i}.jpg"),
                        rng.integers(0, 255, (375, 500, 3), dtype=np.uint8))
            Image.fromarray(rng.integers(0, 21, (375, 500), dtype=np.uint8)).save(
                os.path.join(root, "annotations", "train", f"{i}.png"))
        splits = build_class_splits("bench", list(range(1, 16)), list(range(16, 21)), [f"c{i}" for i in range(21)])
        data = ZeroShotSegmentation(root, [("train", str(i)) for i in range(images)], splits, train=True,
                                    crop_size=crop)
        stream = BatchStream(data, batch, workers, seed=0)
        stream.next()                                    # workers started
        start = time.perf_counter()
        count = 0
        while count < images:
            count += stream.next()[0].shape[0]
        return count / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="a small model (seconds on a laptop)")
    parser.add_argument("--batch", type=int, default=None, help="training batch (default 8; tiny: 4)")
    parser.add_argument("--crop", type=int, default=None, help="training crop (default 368; tiny: 96)")
    parser.add_argument("--amp", nargs="+", default=None, choices=AMP_MODES,
                        help="precisions to time (default: every one the device supports)")
    parser.add_argument("--calls", nargs="+", default=list(CALLS), choices=CALLS, help="calls to time")
    parser.add_argument("--channels_last", action="store_true", help="the model in channels-last layout")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--loader", type=int, default=None, metavar="WORKERS",
                        help="also measure the training loader with this many workers")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name, flags = cpu_info()
    modes = supported_amp(device, flags)
    wanted = args.amp or modes
    for mode in wanted:
        if mode not in modes:
            print(f"skipped --amp {mode}: no fast path on this device (CPU flags {flags})")
    wanted = [m for m in wanted if m in modes]
    batch = args.batch or (4 if args.tiny else 8)
    crop = args.crop or (96 if args.tiny else 368)
    torch.manual_seed(0)
    model = build(args.tiny, device, args.channels_last)

    rates = {mode: device_rates(device, Precision(mode, device.type), args.repeats) for mode in wanted}
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu: {name}",
               "cpu_flags": flags, "threads": torch.get_num_threads(), "rate_gflops": {}, "calls": []}
    print(f"{results['device']}, {results['threads']} threads, flags {' '.join(flags)}, torch {torch.__version__}, "
          f"model {'tiny' if args.tiny else 'paper (DeepLabv2-ResNet101, F=600)'}"
          + (", channels_last" if args.channels_last else ""))
    for mode, rate in rates.items():
        print(f"  measured rate, amp {mode}: conv3x3 {rate['conv3x3']:.1f} GFLOP/s, "
              f"matmul {rate['matmul']:.1f} GFLOP/s")
    for mode in wanted:
        precision = Precision(mode, device.type)
        table = calls(model, precision, device, batch, crop)
        for call in args.calls:
            fn, n, size = table[call]
            memory = {}
            with peak_memory(device, memory):
                times = seconds(fn, device, args.repeats, args.warmup)
            conv, other = flops(fn)
            median = statistics.median(times)
            results["calls"].append({"name": call, "amp": mode, "batch": n, "size": size, "median_s": median,
                                     "min_s": min(times), "gflop": (conv + other) / 1e9, "pct_of_rate": None,
                                     "peak_mem_mib": memory["peak_mem_mib"], "_flops": (conv, other)})
            print(f"  timed {call} (amp {mode}): {median:.4f} s")
    # The rates again at the end (a shared machine's neighbours, clock changes): the floor is the better of both,
    # and the shares of it are recomputed with it.
    for mode in wanted:
        again = device_rates(device, Precision(mode, device.type), args.repeats)
        rates[mode] = {k: max(v, again[k]) for k, v in rates[mode].items()}
    results["rate_gflops"] = {kind: {mode: rates[mode][kind] for mode in wanted} for kind in ("conv3x3", "matmul")}
    for row in results["calls"]:
        conv, other = row.pop("_flops")
        row["pct_of_rate"] = 100.0 * (conv / rates[row["amp"]]["conv3x3"] + other / rates[row["amp"]]["matmul"]) \
            / 1e9 / row["median_s"]
    print("floor rates (the better of the start and the end): " + ", ".join(
        f"{m} conv3x3 {r['conv3x3']:.0f} / matmul {r['matmul']:.0f} GFLOP/s" for m, r in rates.items()))
    print(f"{'call':14s} {'amp':5s} {'batch':>5s} {'size':>5s} {'median s':>9s} {'min s':>8s} {'GFLOP':>8s} "
          f"{'GFLOP/s':>8s} {'% floor':>8s} {'peak MiB':>9s}")
    for row in results["calls"]:
        peak = "-" if row["peak_mem_mib"] is None else f"{row['peak_mem_mib']:.0f}"
        print(f"{row['name']:14s} {row['amp']:5s} {row['batch']:5d} {row['size']:5d} {row['median_s']:9.4f} "
              f"{row['min_s']:8.4f} {row['gflop']:8.1f} {row['gflop'] / row['median_s']:8.1f} "
              f"{row['pct_of_rate']:7.1f}% {peak:>9s}")
    by = {(c["name"], c["amp"]): c["median_s"] for c in results["calls"]}
    for mode in wanted:
        if mode != "off" and ("step1", "off") in by and ("step1", mode) in by:
            print(f"step1 --amp {mode}: {by[('step1', 'off')] / by[('step1', mode)]:.2f}x the float32 speed")
    if args.loader is not None:
        rate = loader_throughput(crop, args.loader, batch)
        results["loader"] = {"workers": args.loader, "images_per_s": rate}
        line = f"loader, {args.loader} workers: {rate:.1f} images/s"
        if ("step1", wanted[0]) in by:
            line += f" (step 1 consumes {batch / by[('step1', wanted[0])]:.1f} images/s)"
        print(line)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
