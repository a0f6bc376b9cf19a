"""Property tests of DeepFool, JSMA and the few-pixel DE attack, on Model B trained briefly on
real MNIST (``tiny_model_b``), in the manner of ``tests/test_baselines.py``.

Small settings keep the file fast (DE is model-bound: its cost is population x generations
forward passes per image); each attack still breaks part of the tiny model.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from stadv.data import TensorData
from stadv.deepfool import DeepFool
from stadv.few_pixel import FewPixel
from stadv.jsma import JSMA
from stadv.local_forward import LocalForward, local_layers, runs_locally
from stadv.margin import margin_loss
from stadv.models import build_model
from stadv.options import build, options
from stadv.registry import ATTACKS as REGISTRY
from stadv.registry import attack_class, label
from stadv.result import AttackResult

N_IMAGES = 12
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "new_attacks.py"

#: name -> (attack, targets used for it, images it runs on in the shared fixture)
ATTACKS: dict[str, tuple[Any, str | None, int]] = {
    "deepfool": (DeepFool(), None, N_IMAGES),
    "deepfool-linf": (DeepFool(norm="linf"), None, N_IMAGES),
    "jsma": (JSMA(), "random", 8),
    "few-pixel": (FewPixel(pixels=5, population=40, generations=10), None, N_IMAGES),
}


@pytest.fixture(scope="module")
def batch(mnist_test: TensorData) -> tuple[torch.Tensor, torch.Tensor]:
    return mnist_test.images[:N_IMAGES].clone(), mnist_test.labels[:N_IMAGES].clone()


@pytest.fixture(scope="module")
def results(
    tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, AttackResult]:
    x, y = batch
    return {name: a(tiny_model_b, x[:n], y[:n], targets=t) for name, (a, t, n) in ATTACKS.items()}


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


# -- properties of every attack ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(ATTACKS))
def test_input_not_mutated_and_model_restored(
    name: str, tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    attack, targets, _ = ATTACKS[name]
    x, y = batch[0][:3], batch[1][:3]
    x_before, y_before = x.clone(), y.clone()
    params_before = [p.detach().clone() for p in tiny_model_b.parameters()]
    grads_before = [None if p.grad is None else p.grad.clone() for p in tiny_model_b.parameters()]
    tiny_model_b.train()
    try:
        attack(tiny_model_b, x, y, targets=targets)
        assert all(m.training for m in tiny_model_b.modules())
    finally:
        tiny_model_b.eval()
    assert torch.equal(x, x_before) and torch.equal(y, y_before)
    assert all(p.requires_grad for p in tiny_model_b.parameters())
    for p, g in zip(tiny_model_b.parameters(), grads_before, strict=True):  # no parameter gradients
        assert (p.grad is None and g is None) or (
            p.grad is not None and g is not None and torch.equal(p.grad, g)
        )
    assert all(
        torch.equal(p, q) for p, q in zip(tiny_model_b.parameters(), params_before, strict=True)
    )


@pytest.mark.parametrize("name", list(ATTACKS))
def test_result_shapes_and_success_mask_agree_with_model(
    name: str,
    tiny_model_b: nn.Module,
    results: dict[str, AttackResult],
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    r = results[name]
    n = ATTACKS[name][2]
    x, y = batch[0][:n], batch[1][:n]
    assert isinstance(r, AttackResult) and len(r) == n
    assert r.adv_images.shape == x.shape and r.adv_images.dtype == x.dtype
    for field in (r.success, r.predictions, r.labels, r.iterations, r.evaluations, r.margin):
        assert field.shape == (n,)
    assert r.l2.shape == (n,) and r.linf.shape == (n,) and len(r.stop_reason) == n
    with torch.no_grad():
        logits = tiny_model_b(r.adv_images)
    pred = logits.argmax(1)
    assert torch.equal(r.predictions, pred)
    if r.targets is None:
        assert torch.equal(r.success, pred != y)
    else:
        assert r.targets.shape == (n,) and torch.equal(r.success, pred == r.targets)
    assert torch.equal(r.margin < 0, r.success)
    torch.testing.assert_close(r.margin, margin_loss(logits, y, r.targets))
    diff = (r.adv_images - x).flatten(1)
    torch.testing.assert_close(r.l2, diff.norm(dim=1))
    assert r.adv_images.min() >= 0 and r.adv_images.max() <= 1
    assert r.flows is None and r.seconds > 0
    assert r.extra["attack"] == type(ATTACKS[name][0]).name


@pytest.mark.parametrize("name", list(ATTACKS))
def test_accuracy_under_attack_below_clean(
    name: str,
    tiny_model_b: nn.Module,
    results: dict[str, AttackResult],
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    n = ATTACKS[name][2]
    x, y = batch[0][:n], batch[1][:n]
    clean = _accuracy(tiny_model_b, x, y)
    r = results[name]
    robust = _accuracy(tiny_model_b, r.adv_images, y)
    assert clean > 0.85
    # DeepFool and JSMA break (nearly) every image; the small DE run breaks a few.
    margin = 0.1 if name == "few-pixel" else 0.5
    assert robust < clean - margin, (name, clean, robust)
    if r.targets is not None:  # JSMA reaches most of its targets
        assert r.success_rate >= 0.5


@pytest.mark.parametrize("name", list(ATTACKS))
def test_batched_equals_per_image(
    name: str, tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    attack, targets, _ = ATTACKS[name]
    x, y = batch[0][6:9], batch[1][6:9]
    t = None if targets is None else (y + 3) % 10
    together = attack(tiny_model_b, x, y, targets=t)
    alone = [
        attack(
            tiny_model_b, x[i : i + 1], y[i : i + 1], targets=None if t is None else t[i : i + 1]
        )
        for i in range(3)
    ]
    torch.testing.assert_close(
        together.adv_images, torch.cat([a.adv_images for a in alone]), atol=1e-5, rtol=0
    )
    assert torch.equal(together.success, torch.cat([a.success for a in alone]))
    assert torch.equal(together.iterations, torch.cat([a.iterations for a in alone]))
    assert together.stop_reason == tuple(s for a in alone for s in a.stop_reason)


# -- budgets -----------------------------------------------------------------------------------


def test_deepfool_iteration_cap_and_small_perturbations(
    tiny_model_b: nn.Module,
    results: dict[str, AttackResult],
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = batch
    for name in ("deepfool", "deepfool-linf"):
        r = results[name]
        assert bool((r.iterations <= 50).all()) and bool((r.iterations >= 1).all())
        assert bool((r.evaluations == r.iterations + 1).all())  # each step, then the check
        assert set(r.stop_reason) <= {"boundary_crossed", "max_iterations"}
    one = DeepFool(max_iterations=1)(tiny_model_b, x, y)
    assert bool((one.iterations <= 1).all())
    # One linearised step is not always enough; fifty are, on this model.
    assert one.success_rate < results["deepfool"].success_rate == 1.0
    # DeepFool goes to the nearest boundary: far below FGSM's L-inf 0.3 step in L2 (~3).
    l2, linf = results["deepfool"], results["deepfool-linf"]
    assert float(l2.l2.median()) < 1.5
    # Each variant is the smaller in its own norm.
    both = l2.success & linf.success
    assert float(linf.linf[both].mean()) < float(l2.linf[both].mean())
    assert float(l2.l2[both].mean()) < float(linf.l2[both].mean())


def test_jsma_changes_at_most_gamma_of_the_pixels(
    tiny_model_b: nn.Module,
    results: dict[str, AttackResult],
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    r = results["jsma"]
    x = batch[0][:8]
    changed = (r.adv_images != x).flatten(1).float().mean(dim=1)
    assert bool((changed <= 0.145 + 1e-9).all())
    torch.testing.assert_close(r.extra["changed_fraction"], changed)
    assert r.extra["max_iterations"] == 56  # floor(0.145 * 784 / 2)
    assert bool((r.iterations <= 56).all())
    # theta = +1: pixels only go up, to the maximum.
    moved = r.adv_images != x
    assert bool((r.adv_images[moved] == 1.0).all())
    small = JSMA(gamma=0.02)(tiny_model_b, x[:4], batch[1][:4], targets="random")
    frac = (small.adv_images != x[:4]).flatten(1).float().mean(dim=1)
    assert bool((frac <= 0.02).all()) and bool((small.iterations <= 7).all())
    # Scoring the saliency maps one image at a time gives the same attack.
    alone = JSMA(gamma=0.02, chunk=1)(tiny_model_b, x[:4], batch[1][:4], targets="random")
    assert torch.equal(alone.adv_images, small.adv_images)


def test_few_pixel_changes_at_most_k_pixels(
    tiny_model_b: nn.Module,
    results: dict[str, AttackResult],
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = batch
    r = results["few-pixel"]
    changed = (r.adv_images != x).any(dim=1).flatten(1).sum(dim=1)
    assert bool((changed <= 5).all())
    counted = r.extra["pixels_changed"]
    assert isinstance(counted, torch.Tensor) and torch.equal(counted, changed)
    assert bool((changed[r.success] >= 1).all())
    assert bool((r.iterations <= 10).all())
    assert bool((r.evaluations == 1 + 40 * (r.iterations + 1)).all())
    one = FewPixel(pixels=1, population=8, generations=2)(tiny_model_b, x[:4], y[:4])
    one_counted = one.extra["pixels_changed"]
    assert isinstance(one_counted, torch.Tensor) and bool((one_counted <= 1).all())


def test_few_pixel_targeted_and_seeded(
    tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch[0][:3], batch[1][:3]
    attack = FewPixel(pixels=3, population=12, generations=3)
    a = attack(tiny_model_b, x, y, targets="random")
    b = attack(tiny_model_b, x, y, targets="random")
    assert a.targets is not None and torch.equal(a.adv_images, b.adv_images)
    with torch.no_grad():
        assert torch.equal(a.success, tiny_model_b(a.adv_images).argmax(1) == a.targets)
    c = FewPixel(pixels=3, population=12, generations=3, seed=1)(tiny_model_b, x, y)
    d = attack(tiny_model_b, x, y)
    assert not torch.equal(c.adv_images, d.adv_images)
    # Chunking the model calls does not change the result.
    e = FewPixel(pixels=3, population=12, generations=3, max_batch=7)(tiny_model_b, x, y)
    torch.testing.assert_close(e.adv_images, d.adv_images, atol=1e-6, rtol=0)


def test_few_pixel_best1_and_dithered_f(
    tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """DE/best/1 with F dithered in [0.5, 1) (torchattacks' variant): children sit at the
    image's best member plus a scaled difference, the budget holds, a batch is each image
    alone, and the default draws (rand/1, fixed F) are unchanged by the new options."""
    x, y = batch[0][:4], batch[1][:4]
    best1 = FewPixel(pixels=3, population=12, generations=4, strategy="best1", mutation_high=1.0)
    r = best1(tiny_model_b, x, y)
    assert bool((r.extra["pixels_changed"] <= 3).all())
    assert bool((r.evaluations == 1 + 12 * (r.iterations + 1)).all())
    with torch.no_grad():
        assert torch.equal(r.success, tiny_model_b(r.adv_images).argmax(1) != y)
    alone = best1(tiny_model_b, x[2:3], y[2:3])
    assert torch.equal(alone.adv_images, r.adv_images[2:3])
    plain = FewPixel(pixels=3, population=12, generations=4)
    assert not torch.equal(plain(tiny_model_b, x, y).adv_images, r.adv_images)
    # one generation's children, by hand: base = each image's fittest member
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    pop = torch.stack([best1._initial((1, 28, 28), gen_a) for _ in range(2)])  # (2, 12, 3, 3)
    _ = torch.stack([best1._initial((1, 28, 28), gen_b) for _ in range(2)])
    fit = torch.rand(2, 12, generator=torch.Generator().manual_seed(0))
    kids = best1._children(pop, fit, gen_a, (1, 28, 28))
    r_idx = best1._triples(gen_b)
    f = 0.5 + 0.5 * float(torch.rand((), generator=gen_b, dtype=torch.float64))
    assert 0.5 <= f < 1.0
    base = pop[torch.arange(2), fit.argmin(dim=1)].unsqueeze(1)
    want = best1._clip(base + f * (pop[:, r_idx[:, 0]] - pop[:, r_idx[:, 1]]), (1, 28, 28))
    torch.testing.assert_close(kids, want)


def test_few_pixel_resample_draws_outside_children_afresh() -> None:
    """``out_of_bounds="resample"``: a child's coordinate outside its range is a fresh uniform
    draw (SciPy's DE), so children do not pile up on the border rows and columns as clipped
    ones do; every child stays in range either way."""
    shape = (1, 28, 28)
    clip = FewPixel(pixels=3, population=64, mutation=0.9)
    fresh = FewPixel(pixels=3, population=64, mutation=0.9, out_of_bounds="resample")
    pop = clip._initial(shape, torch.Generator().manual_seed(0)).unsqueeze(0)
    fit = torch.rand(1, 64, generator=torch.Generator().manual_seed(1))
    border = {}
    for attack in (clip, fresh):
        kids = attack._children(pop, fit, torch.Generator().manual_seed(2), shape)
        rows, cols, vals = kids[..., 0], kids[..., 1], kids[..., 2]
        assert bool(((rows >= 0) & (rows < 28) & (cols >= 0) & (cols < 28)).all())
        assert bool(((vals >= 0) & (vals <= 1)).all())
        on_edge = (rows.floor() == 0) | (rows.floor() == 27) | (cols.floor() == 0)
        border[attack.out_of_bounds] = int((on_edge | (cols.floor() == 27)).sum())
    assert border["resample"] < border["clip"] / 2


def test_bf16_fitness_finds_exactly_the_fp32_successes(
    tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Under ``fitness_precision="bf16"`` a candidate is a success exactly when the fp32 model
    says so (every candidate within CONFIRM_BAND logits is evaluated again in fp32, and
    counted), and the attack's success mask is the model's fp32 prediction."""
    x, y = batch[0][:6], batch[1][:6]
    gen = torch.Generator().manual_seed(3)
    low = FewPixel(pixels=5, population=64, fitness_precision="bf16")
    z = torch.stack([low._initial((1, 28, 28), gen) for _ in range(6)])  # (6, 64, 5, 3)
    for targeted, cls in ((False, y), (True, (y + 1) % 10)):
        fit, hit, evals = low._evaluate(tiny_model_b.eval(), x, torch.arange(6), z, cls, targeted)
        imgs = FewPixel.render(
            x.unsqueeze(1).expand(6, 64, 1, 28, 28).reshape(-1, 1, 28, 28), z.reshape(-1, 5, 3)
        )
        with torch.no_grad():
            pred = tiny_model_b(imgs).argmax(1).view(6, 64)
        want = cls.unsqueeze(1)
        assert torch.equal(hit, pred == want if targeted else pred != want)
        assert bool((evals >= 64).all()) and bool((evals <= 128).all())
        assert fit.shape == (6, 64) and bool(((fit >= 0) & (fit <= 1)).all())
    r = FewPixel(pixels=5, population=40, generations=10, fitness_precision="bf16")(
        tiny_model_b, x, y
    )
    with torch.no_grad():
        assert torch.equal(r.success, tiny_model_b(r.adv_images).argmax(1) != y)
    assert bool((r.evaluations >= 1 + 40 * (r.iterations + 1)).all())
    assert bool((r.extra["pixels_changed"] <= 5).all())


def _padded_net() -> nn.Sequential:
    """Convolutions with padding after the first layer too, and an element-wise module first."""
    return nn.Sequential(
        nn.Identity(),
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 4, stride=2, padding=2),
        nn.Tanh(),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 15 * 15, 10),
    )


@pytest.mark.parametrize("net_name", ["A", "C", "padded"])
def test_local_forward_gives_the_models_logits(net_name: str) -> None:
    """:class:`LocalForward` (each convolution recomputed only where the changed pixels reach
    it) gives the whole model's logits, at the borders too, with a padded convolution inside;
    and it computes on boxes for these k (``local``), so the test checks the local path."""
    torch.manual_seed(0)
    net = (_padded_net() if net_name == "padded" else build_model(net_name)).eval()
    clean = torch.rand(3, 1, 28, 28)
    fwd = LocalForward(net, clean)
    for k in (1, 3):
        assert fwd.local(k)
        z = FewPixel(pixels=k, population=30)._initial((1, 28, 28), torch.Generator())
        z = z.repeat(3, 1, 1)  # (90, k, 3)
        z[:10, :, 0] = 0.5  # top row
        z[10:20, :, 1] = 27.9  # right column
        z[20:25] = z[20:25, :1]  # all k pixels on one position
        owner = torch.arange(3).repeat_interleave(30)
        images = FewPixel.render(clean[owner], z)
        with torch.no_grad():
            want, before = net(images), net(clean[owner])
        got = fwd(images, owner, z[..., 0].floor().long(), z[..., 1].floor().long())
        assert (want - before).abs().max() > 1e-3  # the pixels changed the logits
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_local_forward_runs_the_whole_model_where_boxes_would_not_pay() -> None:
    """Model B's second convolution is reached whole by any pixel: ``local`` is False and the
    call is the model's own forward pass."""
    torch.manual_seed(0)
    net = build_model("B").eval()
    clean = torch.rand(2, 1, 28, 28)
    fwd = LocalForward(net, clean)
    assert not fwd.local(1)
    rows = torch.tensor([[3], [20]])
    images = clean.clone()
    images[0, 0, 3, 3], images[1, 0, 20, 20] = 1.0, 0.0
    with torch.no_grad():
        torch.testing.assert_close(fwd(images, torch.arange(2), rows, rows), net(images))


@pytest.mark.parametrize(
    ("net", "named"),
    [
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten()), "MaxPool2d"),
        (nn.Sequential(nn.Conv2d(1, 2, 3, dilation=2), nn.Flatten()), "dilation"),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), "Flatten"),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Dropout().train(), nn.Flatten()), "eval mode"),
        (nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), "no convolution"),
    ],
)
def test_local_forward_names_what_it_cannot_run(net: nn.Module, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        local_layers(net)


def test_few_pixel_local_forward_names_the_module_before_any_work() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(338, 10))
    x, y = torch.rand(2, 1, 28, 28), torch.zeros(2, dtype=torch.long)
    attack = FewPixel(fitness_forward="local", population=8, generations=1, check=False)
    with pytest.raises(ValueError, match="MaxPool2d"):
        attack(net, x, y)
    assert not runs_locally(net) and runs_locally(build_model("C").eval())
    auto = dataclasses.replace(attack, fitness_forward="auto")  # the whole model, here
    full = dataclasses.replace(attack, fitness_forward="full")
    assert torch.equal(auto(net, x, y).adv_images, full(net, x, y).adv_images)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_few_pixel_local_forward_finds_what_the_full_forward_finds(precision: str) -> None:
    """``fitness_forward="local"`` gives the same attack as the whole model's forward pass on
    Model C's architecture (its logits are the model's; successes confirmed by the model)."""
    torch.manual_seed(1)
    net = build_model("C").eval()
    x = torch.rand(4, 1, 28, 28)
    y = torch.arange(4)
    full = FewPixel(pixels=3, population=24, generations=4, fitness_precision=precision)
    local = dataclasses.replace(full, fitness_forward="local")
    a, b = full(net, x, y, targets="random"), local(net, x, y, targets="random")
    auto = dataclasses.replace(full, fitness_forward="auto")(net, x, y, targets="random")
    assert torch.equal(auto.adv_images, b.adv_images)  # C runs locally under "auto"
    if precision == "fp32":  # same logits, so the same path
        assert torch.equal(a.adv_images, b.adv_images)
        assert torch.equal(a.iterations, b.iterations)
        # the local pass's near successes are evaluated again by the model, and counted
        assert bool((b.evaluations >= a.evaluations).all())
    assert torch.equal(b.success, net(b.adv_images).argmax(1) == b.targets)
    assert bool((b.extra["pixels_changed"] <= 3).all())


def test_misclassified_images_are_returned_unchanged(
    tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x = batch[0][:4]
    with torch.no_grad():
        wrong = (tiny_model_b(x).argmax(1) + 1) % 10  # labels the model never predicts
    for attack in (DeepFool(), FewPixel(population=8, generations=1)):
        r = attack(tiny_model_b, x, wrong)
        assert torch.equal(r.adv_images, x) and bool(r.success.all())
        assert bool((r.iterations == 0).all())


# -- calls and options -------------------------------------------------------------------------


def test_targeted_and_untargeted_refusals(
    tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch[0][:2], batch[1][:2]
    with pytest.raises(ValueError, match="DeepFool is untargeted.*random"):
        DeepFool()(tiny_model_b, x, y, targets="random")
    with pytest.raises(ValueError, match="JSMA is a targeted attack"):
        JSMA()(tiny_model_b, x, y)
    for attack in (DeepFool(), FewPixel(population=4, generations=0)):
        with pytest.raises(ValueError, match="bounds"):
            attack(tiny_model_b, x + 2.0, y)
        with pytest.raises(ValueError, match="labels"):
            attack(tiny_model_b, x, y[:1])
    with pytest.raises(ValueError, match="differ"):
        JSMA()(tiny_model_b, x, y, targets=y.clone())


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (DeepFool, {"norm": "l1"}),
        (DeepFool, {"overshoot": -0.1}),
        (DeepFool, {"overshoot": float("nan")}),
        (DeepFool, {"max_iterations": 0}),
        (DeepFool, {"max_iterations": 2.5}),
        (DeepFool, {"num_classes": 1}),
        (JSMA, {"theta": 0.0}),
        (JSMA, {"theta": 1.5}),
        (JSMA, {"theta": -2.0}),
        (JSMA, {"gamma": 0.0}),
        (JSMA, {"gamma": 1.2}),
        (JSMA, {"chunk": 0}),
        (JSMA, {"bounds": (1.0, 0.0)}),
        (FewPixel, {"pixels": 0}),
        (FewPixel, {"population": 3}),
        (FewPixel, {"generations": -1}),
        (FewPixel, {"mutation": 0.0}),
        (FewPixel, {"max_batch": 0}),
        (FewPixel, {"seed": -1}),
        (FewPixel, {"fitness_precision": "fp16"}),
        (FewPixel, {"fitness_forward": "sparse"}),
        (FewPixel, {"strategy": "best2"}),
        (FewPixel, {"out_of_bounds": "reflect"}),
        (FewPixel, {"mutation_high": 0.4}),
        (FewPixel, {"mutation_high": float("inf")}),
    ],
)
def test_bad_hyper_parameters_name_option_and_value(cls: Any, kwargs: dict[str, Any]) -> None:
    ((key, value),) = kwargs.items()
    with pytest.raises(ValueError, match=key) as info:
        cls(**kwargs)
    assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_registry_and_option_schema() -> None:
    assert attack_class("deepfool") is DeepFool and REGISTRY["jsma"] is JSMA
    assert attack_class("few-pixel") is FewPixel
    assert [label(n) for n in ("deepfool", "jsma", "few-pixel")] == [
        "DeepFool",
        "JSMA",
        "Few-pixel DE",
    ]
    opts = options(DeepFool)
    assert opts["norm"].kind == "choice" and opts["norm"].choices == ("l2", "linf")
    assert "max_batch" not in options(FewPixel) and "pixels" in options(FewPixel)
    assert "chunk" not in options(JSMA) and options(JSMA)["gamma"].default == 0.145
    assert build(DeepFool, {"norm": "linf", "max_iterations": "7"}) == DeepFool(
        norm="linf", max_iterations=7
    )
    with pytest.raises(ValueError, match="'l1'.*'l2', 'linf'"):
        build(DeepFool, {"norm": "l1"})
    with pytest.raises(TypeError):
        JSMA(1.0)  # type: ignore[call-arg]
    with pytest.raises(AttributeError):
        FewPixel().pixels = 3  # type: ignore[misc]


# -- the benchmark script, in a tiny configuration ---------------------------------------------


def _script(path: Path) -> Any:
    """The benchmark script at ``path``, imported as a module."""
    spec = importlib.util.spec_from_file_location(path.stem + "_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_script_runs_and_writes_json(data_root: Path, tmp_path: Path) -> None:
    bench = _script(BENCHMARK)
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        report = bench.main(
            [
                "--quick-model",
                "--n-images", "2",
                "--attacks", "deepfool", "few-pixel",
                "--implementations", "stadv", "stadv-bf16", "scipy",
                "--pixels", "1",
                "--de-population", "8",
                "--de-generations", "2",
                "--data-dir", str(data_root),
                "--json", str(out),
            ]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    saved = json.loads(out.read_text())
    assert saved["environment"]["torch"] == torch.__version__
    assert {"device", "threads", "n_images", "de_population"} <= set(saved["environment"])
    rows = {(r["attack"], r["implementation"]) for r in saved["rows"]}
    assert rows == {
        ("deepfool-l2", "stadv"),
        ("deepfool-linf", "stadv"),
        ("few-pixel-1", "stadv"),
        ("few-pixel-1", "stadv-bf16"),
        ("few-pixel-1", "scipy"),
    }
    assert set(saved["speedup_of_stadv"]["few-pixel-1"]) == {
        "stadv over scipy",
        "stadv-bf16 over scipy",
    }
    for r in saved["rows"]:
        assert r["n"] == 2 and r["seconds"] > 0 and r["attacks_per_second"] > 0
        assert r["success_ci_low"] <= r["success"] <= r["success_ci_high"]
    assert report["rows"][0]["success"] == 1.0  # DeepFool breaks both images
    with pytest.raises(SystemExit):
        bench.parse_args(["--n-images", "0"])


def test_local_forward_benchmark_runs_and_writes_json(data_root: Path, tmp_path: Path) -> None:
    bench = _script(BENCHMARK.parent / "local_forward.py")
    out = tmp_path / "local.json"
    threads = torch.get_num_threads()
    try:
        rows = bench.main(
            [
                "--untrained", "--models", "B", "C", "--pixels", "1",
                "--images", "2", "--candidates", "64", "--repeats", "1",
                "--data-dir", str(data_root), "--json", str(out), "--record", str(tmp_path / "r"),
            ]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert json.loads(out.read_text()) == rows
    assert {(r["model"], r["precision"]) for r in rows} == {
        (m, p) for m in "BC" for p in ("fp32", "bf16")
    }
    by = {(r["model"], r["precision"]): r for r in rows}
    assert by[("C", "fp32")]["local_path"] and not by[("B", "fp32")]["local_path"]
    assert by[("C", "fp32")]["max_logit_difference"] < 1e-4
    assert by[("B", "fp32")]["sparse_max_logit_difference"] < 1e-4
    assert by[("B", "bf16")]["sparse_ms_per_1000"] > 0 and "sparse_speedup" not in by[("C", "fp32")]
    assert all(r["evaluations"] == 64 and r["local_ms_per_1000"] > 0 for r in rows)
    assert len(list((tmp_path / "r").glob("*.json"))) == 4
    with pytest.raises(SystemExit):
        bench.parse_args(["--candidates", "0"])


def test_sparse_second_conv_gives_the_models_logits() -> None:
    """The benchmark's experiment (the second convolution from the first layer's change
    alone) gives the model's logits on B (stride 2) and C (stride 1), also where pixels share a
    row, a box or a position, and at the image's corners; a model it cannot run is named."""
    bench = _script(BENCHMARK.parent / "local_forward.py")
    clean = torch.rand(2, 1, 28, 28)
    rows = torch.tensor([[0, 0, 1], [27, 26, 27], [5, 6, 7], [13, 13, 13], [3, 20, 27]])
    cols = torch.tensor([[0, 1, 0], [27, 27, 0], [5, 6, 7], [13, 13, 13], [25, 4, 0]])
    owner = torch.tensor([0, 1, 0, 1, 1])
    images = clean[owner].clone()
    for n in range(5):
        images[n, 0, rows[n], cols[n]] = torch.rand(3)
    for name in "BC":
        torch.manual_seed(0)
        net = build_model(name).eval()
        with torch.no_grad():
            want = net(images)
        got = bench.SparseSecondConv(net, clean)(images, owner, rows, cols)
        assert torch.allclose(got, want, atol=1e-5), (name, float((got - want).abs().max()))
    one = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 26 * 26, 10))
    with pytest.raises(ValueError, match="two convolution stages, got 1"):
        bench.SparseSecondConv(one.eval(), clean)
    padded = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1), nn.Flatten(),
        nn.Linear(2 * 26 * 26, 10),
    )  # fmt: skip
    with pytest.raises(ValueError, match="no padding"):
        bench.SparseSecondConv(padded.eval(), clean)
