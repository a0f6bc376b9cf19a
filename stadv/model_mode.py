"""The model's attack mode: eval mode, frozen parameters, restored on exit.

:func:`prepared_model` is what every attack (and adversarial training's example generation)
runs the model in, so an attack sees the deterministic function it is evaluated on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from stadv.input_grad import native_input_grad


@contextmanager
def prepared_model(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode with ``requires_grad=False`` on every parameter, restored on exit.

    Eval mode turns dropout off (and uses running batch-norm statistics), so an attack sees the
    deterministic function it is evaluated on; frozen parameters mean input gradients cost no
    parameter gradients and leave ``.grad`` untouched. On the CPU, few-channel convolutions
    take their input gradient from torch's native kernel instead of oneDNN's
    (:func:`stadv.input_grad.native_input_grad`: same values to rounding, 5-8x faster for a
    1-channel first layer). The training flag of every sub-module, the ``requires_grad`` of
    every parameter and every module's ``forward`` are restored, also on an exception.

    Example::

        >>> with prepared_model(model) as net:
        ...     adv = attack_step(net, images)
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        with native_input_grad(model):
            yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in grads:
            p.requires_grad_(flag)
