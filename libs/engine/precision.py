"""Mixed precision (`--amp`, config key `amp`; docs/method.md §8.7): autocast for the forward passes and losses,
and for float16 a gradient scaler.

* `off` (default): float32 everywhere, the faithful numbers; no autocast context is entered at all.
* `bf16`: autocast to bfloat16 on the CPU (fast where it has AVX512-BF16 or AMX) or on CUDA. bfloat16 has
  float32's exponent range, so gradients need no scaling.
* `fp16`: autocast to float16 with a GradScaler (float16 gradients underflow without it). Meant for CUDA; it runs
  on the CPU too, slowly unless the CPU has AVX512-FP16 or AMX-FP16 (tests use it there for the scaler's path).

What autocast runs in low precision: convolutions and matrix products (the backbone, ASPP, contextual convs,
generator and classifier layers). What stays float32, each for its reason (comments at the code): the contextual
module's noise, z, exp(logvar / 2) and h0 (models/contextual.py), the KL divergence's exp, the GAN losses
(BCE on a sigmoid probability), the softmax cross-entropy, the gradient penalty's second-order gradient and the
MMD's expanded distances (libs/losses.py).
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch

AMP_MODES = ("off", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(mode: str, device_type: str) -> None:
    if mode not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    if device_type not in ("cpu", "cuda") and mode != "off":
        raise ValueError(f"--amp {mode}: mixed precision is implemented for cpu and cuda devices, not {device_type}")


class Precision:
    """The precision of one run's training and evaluation on one device type."""

    def __init__(self, mode: str = "off", device_type: str = "cpu"):
        check_amp(mode, device_type)
        self.mode = mode
        self.device_type = device_type
        self.scaler: Optional[torch.amp.GradScaler] = (
            torch.amp.GradScaler(device_type) if mode == "fp16" else None)

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def autocast(self):
        """The context for forward passes and losses (backward passes run outside it)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=_DTYPES[self.mode])

    def backward(self, loss: torch.Tensor, inputs: Sequence[torch.Tensor], retain: bool) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward(inputs=inputs, retain_graph=retain)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """optimizer.step(); with the scaler: unscale, and skip the step if a gradient is inf/NaN."""
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()

    def end_iteration(self) -> None:
        """After every optimizer of the iteration has stepped: the scaler adapts its scale."""
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict:
        """Plain types only (loads with torch.load(weights_only=True))."""
        scaler = None
        if self.scaler is not None:
            scaler = {k: (float(v) if isinstance(v, float) else int(v) if isinstance(v, int) else v)
                      for k, v in self.scaler.state_dict().items()}
        return {"mode": self.mode, "scaler": scaler}

    def load_state_dict(self, state: dict) -> None:
        if state.get("mode", "off") != self.mode:
            raise ValueError(f"the checkpoint was trained with --amp {state.get('mode')}, this run uses --amp "
                             f"{self.mode}; resume with the same mode")
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
