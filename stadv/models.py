"""Models A, B and C of Xiao et al. (ICLR 2018), Table 4.

The paper took them from Tramèr et al.'s ensemble adversarial training code
(``mnist.py``, Keras, inputs in [0, 1] and no normalisation). All three return **logits**:
no softmax inside, so the attack's margin loss sees ``Z`` as the paper defines it.

====  ===========================================================================  =========
name  layers                                                                        params
====  ===========================================================================  =========
A     Conv(64, 5x5, valid)+ReLU, Conv(64, 5x5, valid)+ReLU, Dropout(0.25),           3,382,346
      FC(128)+ReLU, Dropout(0.5), FC(10)
B     Dropout(0.2), Conv(64, 8x8, stride 2, same)+ReLU,                               710,218
      Conv(128, 6x6, stride 2, valid)+ReLU, Conv(128, 5x5, valid)+ReLU,
      Dropout(0.5), FC(10)
C     Conv(128, 3x3, valid)+ReLU, Conv(64, 3x3, valid)+ReLU, Dropout(0.25),          4,795,082
      FC(128)+ReLU, Dropout(0.5), FC(10)
====  ===========================================================================  =========

Example::

    >>> model = build_model("A")
    >>> model(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

IMAGE_SHAPE: tuple[int, int, int] = (1, 28, 28)
NUM_CLASSES = 10


def model_a(num_classes: int = NUM_CLASSES, in_channels: int = 1) -> nn.Sequential:
    """Model A: two 5x5 convolutions, FC(128)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=5),
        nn.ReLU(),
        nn.Conv2d(64, 64, kernel_size=5),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(64 * 20 * 20, 128),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(128, num_classes),
    )


def model_b(num_classes: int = NUM_CLASSES, in_channels: int = 1) -> nn.Sequential:
    """Model B: input dropout, three strided convolutions, no hidden FC layer.

    TensorFlow's "same" padding for an 8x8 kernel at stride 2 on 28x28 pads 3 on each side
    (output 14x14), which ``padding=3`` reproduces exactly.
    """
    return nn.Sequential(
        nn.Dropout(0.2),
        nn.Conv2d(in_channels, 64, kernel_size=8, stride=2, padding=3),
        nn.ReLU(),
        nn.Conv2d(64, 128, kernel_size=6, stride=2),
        nn.ReLU(),
        nn.Conv2d(128, 128, kernel_size=5),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(128, num_classes),
    )


def model_c(num_classes: int = NUM_CLASSES, in_channels: int = 1) -> nn.Sequential:
    """Model C: two 3x3 convolutions (128 then 64 channels), FC(128)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 128, kernel_size=3),
        nn.ReLU(),
        nn.Conv2d(128, 64, kernel_size=3),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(64 * 24 * 24, 128),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(128, num_classes),
    )


#: Name -> constructor. Every constructor returns a logits model for (N, 1, 28, 28) inputs in [0, 1].
MODELS: dict[str, Callable[[], nn.Module]] = {"A": model_a, "B": model_b, "C": model_c}

#: Clean MNIST accuracy the paper reports for each model (Xiao et al. 2018, Table 1).
PAPER_ACCURACY: dict[str, float] = {"A": 0.9858, "B": 0.9894, "C": 0.9911}
#: Targeted success the paper reports for stAdv on each model (Xiao et al. 2018, Table 1:
#: tau = 0.05, kappa = 0, every test image towards the 9 other classes).
PAPER_TABLE1_SUCCESS: dict[str, float] = {"A": 0.9995, "B": 0.9998, "C": 1.0}


def check_model_name(name: str) -> str:
    """Normalise a model name; an unknown one raises ``ValueError`` listing the known names."""
    key = name.upper() if isinstance(name, str) else name
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return key


def build_model(name: str) -> nn.Module:
    """A freshly initialised model by name ("A", "B" or "C")."""
    return MODELS[check_model_name(name)]()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Arg-max class of ``model`` on ``images`` (N, C, H, W), in batches, without gradients."""
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            out.append(model(images[start : start + batch_size]).argmax(dim=1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64, device=images.device)
