"""Property tests of the baseline attacks (FGSM, PGD, C&W L2), the target protocols and the
shared result helpers, on Model B trained briefly on real MNIST (``tiny_model_b``)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

from stadv.attack_base import finalize_result
from stadv.cw import CarliniWagnerL2
from stadv.data import TensorData
from stadv.fgsm import FGSM
from stadv.margin import margin_loss
from stadv.model_mode import prepared_model
from stadv.pgd import PGD
from stadv.result import AttackResult
from stadv.sanity import SanityWarning
from stadv.targets import TARGET_PROTOCOLS, expand_targets

N_IMAGES = 48

# Small but effective settings: every attack should break most of a 1-epoch Model B.
ATTACKS: dict[str, Any] = {
    "fgsm": FGSM(epsilon=0.3),
    "pgd": PGD(epsilon=0.3, alpha=0.05, steps=10),
    "cw": CarliniWagnerL2(
        binary_search_steps=2, max_iterations=40, learning_rate=0.1, initial_const=10.0
    ),
}
LINF_BUDGET = {"fgsm": 0.3, "pgd": 0.3}


@pytest.fixture(scope="module")
def batch(mnist_test: TensorData) -> tuple[torch.Tensor, torch.Tensor]:
    return mnist_test.images[:N_IMAGES].clone(), mnist_test.labels[:N_IMAGES].clone()


@pytest.fixture(scope="module")
def results(
    tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, AttackResult]:
    x, y = batch
    return {name: attack(tiny_model_b, x, y) for name, attack in ATTACKS.items()}


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


# -- properties of every attack ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(ATTACKS))
def test_input_not_mutated_and_model_restored(
    name: str, tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch
    x_before, y_before = x.clone(), y.clone()
    params_before = [p.detach().clone() for p in tiny_model_b.parameters()]
    grads_before = [None if p.grad is None else p.grad.clone() for p in tiny_model_b.parameters()]
    tiny_model_b.train()  # the caller's mode and requires_grad must come back
    try:
        ATTACKS[name](tiny_model_b, x[:4], y[:4], targets="random")
        assert tiny_model_b.training
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
def test_success_mask_agrees_with_model(
    name: str,
    tiny_model_b: nn.Module,
    results: dict[str, AttackResult],
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    r = results[name]
    x, y = batch
    with torch.no_grad():
        logits = tiny_model_b(r.adv_images)
    pred = logits.argmax(1)
    assert torch.equal(r.predictions, pred)
    assert torch.equal(r.success, pred != y)
    assert torch.equal(r.labels, y) and r.targets is None
    assert torch.equal(r.source_index, torch.arange(N_IMAGES))
    # The margin is Z_y - max_{i != y} Z_i: negative exactly where the attack succeeded (no ties).
    assert torch.equal(r.margin < 0, r.success)
    torch.testing.assert_close(r.margin, margin_loss(logits, y, None))
    diff = (r.adv_images - x).flatten(1)
    torch.testing.assert_close(r.l2, diff.norm(dim=1))
    torch.testing.assert_close(r.linf, diff.abs().amax(dim=1))
    assert r.flows is None and r.flow_loss is None
    assert len(r.stop_reason) == N_IMAGES and r.seconds > 0


@pytest.mark.parametrize("name", list(ATTACKS))
def test_accuracy_under_attack_well_below_clean(
    name: str,
    tiny_model_b: nn.Module,
    results: dict[str, AttackResult],
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = batch
    clean = _accuracy(tiny_model_b, x, y)
    robust = _accuracy(tiny_model_b, results[name].adv_images, y)
    assert clean > 0.85
    assert robust < clean - 0.5, (name, clean, robust)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_images_in_range_and_budget(
    name: str, results: dict[str, AttackResult], batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    r = results[name]
    assert r.adv_images.min() >= 0 and r.adv_images.max() <= 1
    assert bool(torch.isfinite(r.adv_images).all())
    if name in LINF_BUDGET:
        assert float((r.adv_images - batch[0]).abs().max()) <= LINF_BUDGET[name] + 1e-6


@pytest.mark.parametrize("name", list(ATTACKS))
def test_batched_equals_per_image(
    name: str, tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    attack = ATTACKS[name]
    if name == "pgd":  # the random start depends on the row's position in the batch
        attack = PGD(epsilon=0.3, alpha=0.05, steps=10, random_start=False)
    x, y = batch[0][:5], batch[1][:5]
    together = attack(tiny_model_b, x, y)
    alone = [attack(tiny_model_b, x[i : i + 1], y[i : i + 1]) for i in range(5)]
    torch.testing.assert_close(
        together.adv_images, torch.cat([a.adv_images for a in alone]), atol=1e-5, rtol=0
    )
    assert torch.equal(together.success, torch.cat([a.success for a in alone]))
    assert torch.equal(together.iterations, torch.cat([a.iterations for a in alone]))


@pytest.mark.parametrize("name", list(ATTACKS))
def test_targeted_all_protocol(
    name: str, tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch[0][:4], batch[1][:4]
    r = ATTACKS[name](tiny_model_b, x, y, targets="all")
    assert len(r) == 36 and r.targeted and r.targets is not None
    assert torch.equal(r.source_index, torch.arange(4).repeat_interleave(9))
    assert bool((r.targets != r.labels).all())
    with torch.no_grad():
        pred = tiny_model_b(r.adv_images).argmax(1)
    assert torch.equal(r.success, pred == r.targets)
    assert torch.equal(r.margin < 0, r.success)
    if name in LINF_BUDGET:
        assert float((r.adv_images - x[r.source_index]).abs().max()) <= LINF_BUDGET[name] + 1e-6


def test_iterative_targeted_attacks_reach_their_targets(
    tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch[0][:16], batch[1][:16]
    pgd = PGD(epsilon=0.3, alpha=0.05, steps=20)(tiny_model_b, x, y, targets="random")
    cw = ATTACKS["cw"](tiny_model_b, x, y, targets="random")
    # Same seed, same protocol: both attack the same targets.
    assert (
        pgd.targets is not None and cw.targets is not None and torch.equal(pgd.targets, cw.targets)
    )
    assert pgd.success_rate > 0.6 and cw.success_rate > 0.6
    # FGSM's single step towards a random target is much weaker than PGD's twenty.
    fgsm = FGSM(epsilon=0.3)(tiny_model_b, x, y, targets="random")
    assert fgsm.success_rate < pgd.success_rate


def test_iteration_counts(results: dict[str, AttackResult]) -> None:
    assert bool((results["fgsm"].iterations == 1).all()) and bool(
        (results["fgsm"].evaluations == 1).all()
    )
    assert bool((results["pgd"].iterations == 10).all())
    cw = results["cw"].iterations
    assert bool((cw >= 1).all()) and bool((cw <= 2 * 40).all())


def test_cw_returns_small_perturbations_and_originals_on_failure(
    tiny_model_b: nn.Module,
    results: dict[str, AttackResult],
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, _ = batch
    cw, fgsm = results["cw"], results["fgsm"]
    failed = ~cw.success
    assert torch.equal(cw.adv_images[failed], x[failed])
    both = cw.success & fgsm.success
    assert int(both.sum()) >= 10
    # The L2 attack finds far smaller L2 perturbations than an L-inf step of 0.3.
    assert float(cw.l2[both].median()) < 0.5 * float(fgsm.l2[both].median())
    const = cw.extra["const"]
    assert (
        isinstance(const, torch.Tensor) and const.shape == (N_IMAGES,) and bool((const > 0).all())
    )


def test_more_cw_search_lowers_distance(
    tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch[0][:12], batch[1][:12]
    short = CarliniWagnerL2(
        binary_search_steps=1, max_iterations=40, learning_rate=0.1, initial_const=10.0
    )(tiny_model_b, x, y)
    longer = CarliniWagnerL2(
        binary_search_steps=4, max_iterations=40, learning_rate=0.1, initial_const=10.0
    )(tiny_model_b, x, y)
    # The longer search keeps the best over a superset of (c, iterate) pairs: never worse.
    both = short.success & longer.success
    assert int(both.sum()) >= 6
    assert bool((longer.l2[both] <= short.l2[both] + 1e-5).all())
    assert float(longer.l2[both].mean()) < float(short.l2[both].mean())


def test_zero_gradient_model_is_reported_and_left_alone(
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.arange(10, dtype=torch.float32))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bias.expand(x.shape[0], 10) + 0 * x.flatten(1).sum(1, keepdim=True)

    x, y = batch[0][:6], batch[1][:6]
    with pytest.warns(SanityWarning, match="zero"):
        r = FGSM(epsilon=0.3)(Constant(), x, y)
    assert r.extra["zero_gradients"] == 6
    assert torch.equal(r.adv_images, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = FGSM(epsilon=0.3, check=False)(Constant(), x, y)
    assert r.extra["zero_gradients"] == 6


def test_pgd_random_start_is_seeded(
    tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch[0][:4], batch[1][:4]
    a = PGD(steps=1, alpha=0.01, seed=3)(tiny_model_b, x, y)
    b = PGD(steps=1, alpha=0.01, seed=3)(tiny_model_b, x, y)
    c = PGD(steps=1, alpha=0.01, seed=4)(tiny_model_b, x, y)
    assert torch.equal(a.adv_images, b.adv_images)
    assert not torch.equal(a.adv_images, c.adv_images)
    # One step of 0.01 from a uniform start uses the whole ball, not just 0.01 of it.
    assert float(a.linf.min()) > 0.25


def test_epsilon_zero_returns_the_inputs(
    tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch[0][:4], batch[1][:4]
    for attack in (FGSM(epsilon=0.0), PGD(epsilon=0.0, steps=3)):
        r = attack(tiny_model_b, x, y)
        assert torch.equal(r.adv_images, x)


# -- bad values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (FGSM, {"epsilon": -0.1}),
        (FGSM, {"epsilon": float("nan")}),
        (FGSM, {"epsilon": float("inf")}),
        (FGSM, {"bounds": (1.0, 0.0)}),
        (FGSM, {"num_classes": 1}),
        (PGD, {"epsilon": -1.0}),
        (PGD, {"alpha": 0.0}),
        (PGD, {"steps": 0}),
        (PGD, {"steps": 2.5}),
        (PGD, {"random_start": "yes"}),
        (PGD, {"seed": -1}),
        (CarliniWagnerL2, {"kappa": -1.0}),
        (CarliniWagnerL2, {"initial_const": 0.0}),
        (CarliniWagnerL2, {"binary_search_steps": 0}),
        (CarliniWagnerL2, {"max_iterations": 0}),
        (CarliniWagnerL2, {"learning_rate": -0.01}),
        (CarliniWagnerL2, {"abort_early": 1}),
        (CarliniWagnerL2, {"bounds": (0.0,)}),
    ],
)
def test_bad_hyper_parameters_raise(cls: Any, kwargs: dict[str, Any]) -> None:
    key = next(iter(kwargs))
    with pytest.raises(ValueError, match=key):
        cls(**kwargs)


def test_hyper_parameters_are_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        FGSM(0.3)  # type: ignore[misc]
    attack = PGD()
    with pytest.raises(AttributeError):
        attack.steps = 3  # type: ignore[misc]


@pytest.mark.parametrize("name", list(ATTACKS))
def test_bad_inputs_raise(
    name: str, tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch[0][:2], batch[1][:2]
    attack = ATTACKS[name]
    with pytest.raises(ValueError, match="bounds"):
        attack(tiny_model_b, x + 2.0, y)
    with pytest.raises(ValueError, match="labels"):
        attack(tiny_model_b, x, y[:1])
    with pytest.raises(ValueError, match="least-likely"):
        attack(tiny_model_b, x, y, targets="everything")
    with pytest.raises(ValueError, match="differ"):
        attack(tiny_model_b, x, y, targets=y.clone())


# -- target protocols ----------------------------------------------------------------------


def test_expand_targets_protocols(
    tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch[0][:5], batch[1][:5]
    xs, ys, ts, src = expand_targets(tiny_model_b, x, y, None)
    assert xs is x and ts is None and torch.equal(src, torch.arange(5)) and torch.equal(ys, y)

    xs, ys, ts, src = expand_targets(tiny_model_b, x, y, "all")
    assert ts is not None and xs.shape == (45, 1, 28, 28)
    for i in range(5):
        rows = slice(9 * i, 9 * i + 9)
        assert ts[rows].tolist() == [c for c in range(10) if c != int(y[i])]
        assert bool((src[rows] == i).all()) and bool((ys[rows] == y[i]).all())
        assert torch.equal(xs[rows], x[i].expand(9, 1, 28, 28))

    with torch.no_grad():
        logits = tiny_model_b(x)
    _, _, ts, _ = expand_targets(tiny_model_b, x, y, "least-likely")
    assert ts is not None
    expected = logits.scatter(1, y.unsqueeze(1), float("inf")).argmin(1)
    assert torch.equal(ts, expected) and bool((ts != y).all())

    explicit = (y + 1) % 10
    _, _, ts, _ = expand_targets(tiny_model_b, x, y, explicit)
    assert ts is not None and torch.equal(ts, explicit)


def test_random_targets_are_seeded_uniform_and_never_the_label(tiny_model_b: nn.Module) -> None:
    n = 9000
    x = torch.zeros(n, 1, 2, 2)
    y = torch.arange(n) % 10
    _, _, t1, _ = expand_targets(tiny_model_b, x, y, "random", seed=5)
    _, _, t2, _ = expand_targets(tiny_model_b, x, y, "random", seed=5)
    _, _, t3, _ = expand_targets(tiny_model_b, x, y, "random", seed=6)
    assert t1 is not None and t2 is not None and t3 is not None
    assert torch.equal(t1, t2) and not torch.equal(t1, t3)
    assert bool((t1 != y).all())
    # For label 0 the 9 other classes appear about 100 times each out of 900.
    counts = torch.bincount(t1[y == 0], minlength=10)
    assert counts[0] == 0 and int(counts[1:].min()) > 60 and int(counts[1:].max()) < 140


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        ("everything", "least-likely"),
        (torch.tensor([1, 2]), "shape"),
        (torch.tensor([1.0, 2.0, 3.0]), "integer"),
        (torch.tensor([1, 2, 10]), r"\[0, 10\)"),
    ],
)
def test_expand_targets_rejects_bad_targets(
    tiny_model_b: nn.Module, targets: Any, match: str
) -> None:
    x, y = torch.zeros(3, 1, 28, 28), torch.tensor([0, 0, 0])
    with pytest.raises(ValueError, match=match):
        expand_targets(tiny_model_b, x, y, targets)


def test_target_protocols_listed() -> None:
    assert TARGET_PROTOCOLS == ("all", "random", "least-likely")


# -- shared helpers ------------------------------------------------------------------------


def test_margin_loss_by_hand() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, -1.0]])
    labels = torch.tensor([1, 0])
    assert margin_loss(logits, labels, None).tolist() == [1.0, 5.0]
    assert margin_loss(logits, labels, torch.tensor([2, 2])).tolist() == [1.0, 6.0]


def test_prepared_model_restores_on_exception(tiny_model_b: nn.Module) -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.Linear(2, 2))
    model.train()
    model[1].eval()  # a mixed mode must come back as it was
    model[2].weight.requires_grad_(False)
    with pytest.raises(RuntimeError, match="boom"), prepared_model(model) as net:
        assert not any(m.training for m in net.modules())
        assert not any(p.requires_grad for p in net.parameters())
        raise RuntimeError("boom")
    assert model.training and model[0].training and not model[1].training and model[2].training
    assert (
        model[0].weight.requires_grad
        and not model[2].weight.requires_grad
        and model[2].bias.requires_grad
    )


def test_finalize_result_judges_by_the_model(
    tiny_model_b: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch[0][:6], batch[1][:6]
    # "Adversarial" images that are just other test images: success is whatever the model says.
    other = torch.roll(x, 1, dims=0)
    r = finalize_result(
        tiny_model_b,
        adv_images=other,
        images=x,
        labels=y,
        targets=None,
        source_index=torch.arange(6),
        iterations=torch.arange(6),
        evaluations=2,
        stop_reason="test",
        seconds=0.5,
    )
    with torch.no_grad():
        pred = tiny_model_b(other).argmax(1)
    assert torch.equal(r.success, pred != y) and torch.equal(r.predictions, pred)
    assert r.iterations.tolist() == list(range(6)) and r.evaluations.tolist() == [2] * 6
    assert r.stop_reason == ("test",) * 6 and r.seconds == 0.5
    with pytest.raises(ValueError, match="stop reasons"):
        finalize_result(
            tiny_model_b,
            adv_images=x,
            images=x,
            labels=y,
            targets=None,
            source_index=torch.arange(6),
            iterations=1,
            evaluations=1,
            stop_reason=("a", "b"),
            seconds=0.0,
        )


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("targets", [None, "all", "random", "least-likely"])
def test_empty_batch(name: str, targets: str | None, tiny_model_b: nn.Module) -> None:
    x, y = torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.int64)
    r = ATTACKS[name](tiny_model_b, x, y, targets=targets)
    assert len(r) == 0 and r.adv_images.shape == (0, 1, 28, 28)
    assert r.l2.shape == r.linf.shape == r.margin.shape == (0,)
    assert (r.targets is None) == (targets is None)


def test_registry_reads_each_attack_class_name_and_label() -> None:
    from stadv import options
    from stadv.attack import StAdv
    from stadv.deepfool import DeepFool
    from stadv.few_pixel import FewPixel
    from stadv.jsma import JSMA
    from stadv.registry import ATTACKS, attack_class, label

    assert ATTACKS == {
        "stadv": StAdv,
        "fgsm": FGSM,
        "pgd": PGD,
        "cw": CarliniWagnerL2,
        "deepfool": DeepFool,
        "jsma": JSMA,
        "few-pixel": FewPixel,
    }
    assert all(cls.name == name for name, cls in ATTACKS.items())
    assert [label(n) for n in ATTACKS][:4] == ["stAdv", "FGSM", "PGD", "C&W"]
    assert attack_class("pgd") is PGD
    with pytest.raises(ValueError, match="unknown attack 'nonesuch'"):
        attack_class("nonesuch")
    for cls in ATTACKS.values():
        assert "device" not in options.options(cls) and "name" not in options.options(cls)
