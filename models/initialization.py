"""Weight initialisation of a fresh run (docs/method.md §2.7), config key `init`."""
import torch
import torch.nn as nn

_SCHEMES = {
    "kaiming": lambda w: nn.init.kaiming_normal_(w, a=0, mode="fan_in", nonlinearity="relu"),
    "gaussian": lambda w: nn.init.normal_(w, 0.0, 0.02),
    "xavier": lambda w: nn.init.xavier_normal_(w, gain=2 ** 0.5),
    "orthogonal": lambda w: nn.init.orthogonal_(w, gain=2 ** 0.5),
}
INIT_SCHEMES = (*_SCHEMES, "default")


def init_weights(model: nn.Module, scheme: str = "kaiming") -> None:
    """Faithful to the original: every Conv2d/Linear weight re-initialised (overwriting ASPP's N(0, 0.01)),
    biases zeroed; BatchNorm and the embedding tables untouched. `default` leaves PyTorch's initialisation."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init: unknown scheme {scheme!r}; expected one of {sorted(INIT_SCHEMES)}")
    if scheme == "default":
        return
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            with torch.no_grad():
                _SCHEMES[scheme](module.weight)
                if module.bias is not None:
                    module.bias.zero_()
