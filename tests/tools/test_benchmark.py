"""tools/benchmark.py: the JSON a run writes, and FLOP counts that match the convolutions' arithmetic."""
import json

import pytest
import torch

from tools import benchmark


def _conv_and_linear_flops(model, size):
    """2 * MACs of every conv and 1x1 layer of a predict call, counted with forward hooks."""
    total = []

    def conv_hook(module, inputs, output):
        weight = module.weight
        total.append(2 * output.numel() * weight.shape[1] * weight.shape[2] * weight.shape[3])

    handles = [m.register_forward_hook(conv_hook) for m in model.back.modules() if isinstance(m, torch.nn.Conv2d)]
    model.eval()
    with torch.no_grad():
        logits = model.predict(torch.randn(1, 3, size, size))
    for h in handles:
        h.remove()
    pixels = logits.shape[-1] * logits.shape[-2]
    trunk, cls = model.dis.fc.conv.weight, model.dis.cls.weight
    return sum(total) + 2 * pixels * (trunk.shape[0] * trunk.shape[1] + cls.shape[0] * cls.shape[1])


def test_benchmark_writes_the_documented_json(tmp_path):
    out = tmp_path / "b.json"
    benchmark.main(["--tiny", "--device", "cpu", "--threads", "1", "--batch", "1", "--crop", "49", "--amp", "off",
                    "--calls", "step2", "predict_321", "--repeats", "1", "--warmup", "0", "--json", str(out)])
    data = json.loads(out.read_text())
    assert set(data) == {"device", "cpu_flags", "threads", "rate_gflops", "calls"}
    assert data["threads"] == 1 and data["device"].startswith("cpu")
    assert set(data["rate_gflops"]) == {"conv3x3", "matmul"} and data["rate_gflops"]["conv3x3"]["off"] > 0
    assert [(c["name"], c["amp"]) for c in data["calls"]] == [("step2", "off"), ("predict_321", "off")]
    for call in data["calls"]:
        assert set(call) == {"name", "amp", "batch", "size", "median_s", "min_s", "gflop", "pct_of_rate",
                             "peak_mem_mib"}
        assert 0 < call["min_s"] <= call["median_s"] and call["gflop"] > 0 and call["pct_of_rate"] > 0
    predict = data["calls"][1]
    assert (predict["batch"], predict["size"]) == (1, 321)
    torch.manual_seed(0)
    model = benchmark.build(True, torch.device("cpu"), False)
    assert predict["gflop"] * 1e9 == pytest.approx(_conv_and_linear_flops(model, 321), rel=1e-9)
