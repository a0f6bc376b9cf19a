"""Defensive distillation, the VAE detector and the prototype conformity loss, on tiny real MNIST."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from defenses.adversarial_training import PGDAdversarialLoss
from defenses.distillation import (
    DistillationLoss,
    TemperatureCrossEntropy,
    distillation_loss,
    soft_labels,
    train_distilled,
)
from defenses.prototype import (
    PrototypeConformityLoss,
    PrototypeModel,
    default_feature_layers,
    prototype_conformity,
    train_pcl,
)
from defenses.vae_detector import (
    ConvVAE,
    DetectorAwareModel,
    VAEDetector,
    VAELoss,
    attack_knowing_detector,
    jensen_shannon,
    load_vae,
    roc_auc,
    save_vae,
    train_vae,
    validation_split,
)
from stadv.attack import StAdv
from stadv.cw import CarliniWagnerL2
from stadv.data import TensorData
from stadv.models import build_model
from stadv.store import CheckpointError
from stadv.train import evaluate, train_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_train(mnist_train_small: TensorData) -> TensorData:
    return mnist_train_small.slice(0, 512)


def _loss_on(loss_fn: Any, model: nn.Module, data: TensorData, seed: int = 0) -> float:
    """``loss_fn`` on ``data`` in eval mode with a fixed seed: comparable before and after."""
    was = model.training
    model.eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        value = float(loss_fn(model, data.images, data.labels))
    model.train(was)
    return value


# -- defensive distillation ------------------------------------------------------------------


def test_distillation_losses_match_their_formulas() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 10) * 50, torch.randn(6, 10) * 50
    t = 100.0
    p = torch.softmax(teacher / t, dim=1)
    expected = -(p * torch.log_softmax(student / t, dim=1)).sum(1).mean()
    torch.testing.assert_close(distillation_loss(student, teacher, t), expected)
    # Soft labels equal to the student's own distribution: the loss is that distribution's entropy.
    q = torch.softmax(student / t, dim=1)
    entropy = -(q * q.log()).sum(1).mean()
    torch.testing.assert_close(distillation_loss(student, student, t), entropy)

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 10))
    x, y = torch.rand(6, 1, 2, 2), torch.arange(6)
    with torch.no_grad():
        z = model(x)
        torch.testing.assert_close(
            TemperatureCrossEntropy(temperature=1.0)(model, x, y), F.cross_entropy(z, y)
        )
        torch.testing.assert_close(
            TemperatureCrossEntropy(temperature=t)(model, x, y), F.cross_entropy(z / t, y)
        )
        torch.testing.assert_close(soft_labels(model, x, temperature=t), torch.softmax(z / t, 1))


def test_distillation_trains_and_the_student_returns_raw_logits(
    tiny_train: TensorData, mnist_test: TensorData
) -> None:
    test = mnist_test.slice(0, 200)
    # The teacher train_distilled would train itself with seed 0: initialised under seed 0,
    # trained at T = 100 with the training loop's seed 0.
    torch.manual_seed(0)
    teacher = build_model("B")
    teacher_report = train_model(
        teacher,
        tiny_train,
        epochs=2,
        lr=1e-2,
        seed=0,
        loss_fn=TemperatureCrossEntropy(temperature=100.0),
        progress=False,
    )
    assert teacher_report.losses[1] < teacher_report.losses[0]
    frozen = [p.detach().clone() for p in teacher.parameters()]
    torch.manual_seed(1)  # the student's initialisation (seed + 1)
    fresh = build_model("B")
    loss = DistillationLoss(teacher=teacher, temperature=100.0)
    before = _loss_on(loss, fresh, tiny_train)

    student, report = train_distilled(
        "B", tiny_train, teacher=teacher, temperature=100.0, epochs=2, lr=1e-2, seed=0
    )
    assert report.temperature == 100.0 and report.teacher is None and not student.training
    after = _loss_on(loss, student, tiny_train)
    assert after < before - 0.1, (before, after)  # measured: 2.30 -> 1.2
    assert all(torch.equal(p, q) for p, q in zip(teacher.parameters(), frozen, strict=True))
    assert all(p.requires_grad for p in teacher.parameters())

    # The student is the plain architecture (no softmax, no 1/T inside): its raw logits.
    plain = build_model("B")
    plain.load_state_dict(student.state_dict())
    x = test.images[:32]
    with torch.no_grad():
        z = student(x)
        torch.testing.assert_close(z, plain.eval()(x), rtol=0, atol=0)
    assert float(z.min()) < 0 and float(z.max()) > 1
    # Trained at T = 100, the logits spread far beyond a normal model's (~10-30), so softmax at
    # T = 1 saturates: the gradient masking Carlini & Wagner's logit attack sidesteps.
    spread = (z.amax(1) - z.amin(1)).median()
    assert float(spread) > 100, float(spread)  # measured: ~550
    assert evaluate(student, test) > 0.5  # measured: 0.63 (512 images, two epochs)


# -- the VAE detector ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector_parts(mnist_train_small: TensorData) -> tuple[ConvVAE, nn.Module, TensorData]:
    """A VAE (2-D latent) and a classifier trained on 2,000 training images; 400 more held out."""
    fit, validation = validation_split(mnist_train_small.slice(0, 2400), 400)
    vae, _ = train_vae(fit, epochs=1, lr=3e-3, seed=0)
    torch.manual_seed(0)
    clf = build_model("B")
    train_model(clf, fit, epochs=1, seed=0, progress=False)
    return vae, clf.eval(), validation


def test_vae_training_lowers_the_elbo_loss(tiny_train: TensorData) -> None:
    torch.manual_seed(0)
    fresh = ConvVAE(latent_dim=2)
    loss = VAELoss()
    before = _loss_on(loss, fresh, tiny_train)
    vae, report = train_vae(tiny_train, epochs=1, lr=3e-3, seed=0)
    after = _loss_on(loss, vae, tiny_train)
    assert len(report.losses) == 1 and after < 0.8 * before, (before, after)
    with torch.no_grad():
        recon = vae(tiny_train.images[:4])
    assert recon.shape == (4, 1, 28, 28) and float(recon.min()) >= 0 and float(recon.max()) <= 1


def test_threshold_comes_from_validation_images_only(
    detector_parts: tuple[ConvVAE, nn.Module, TensorData], mnist_test: TensorData
) -> None:
    vae, clf, validation = detector_parts
    detector = VAEDetector(vae, clf, temperature=10.0)
    with pytest.raises(RuntimeError, match="fit_threshold"):
        detector.detect(validation.images[:2])
    threshold = detector.fit_threshold(validation.images, fpr=0.05)
    val_scores = detector.scores(validation.images)
    val_fpr = float((val_scores > threshold).double().mean())
    assert val_fpr <= 0.05 and val_fpr >= 0.04  # the quantile: 20 of 400 images at most
    # The threshold is the ceil(0.95 n)-th smallest validation score.
    k = math.ceil(0.95 * len(validation)) - 1
    assert threshold == pytest.approx(float(val_scores.sort().values[k]), rel=1e-6)
    assert detector.fitted_on["images"] == len(validation)

    # Test images (noised: their own 95 % quantile is far from the validation one) go through
    # every method; none of them moves the threshold or the scales.
    noise = torch.randn(200, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    test = (mnist_test.images[:200] + 0.5 * noise).clamp(0, 1)
    test_scores = detector.scores(test)
    would_be = float(test_scores.sort().values[math.ceil(0.95 * 200) - 1])
    assert abs(would_be - threshold) > 0.1 * threshold, (would_be, threshold)
    scales = detector.scales.clone()
    detector.detect(test)
    detector.penalty(test)
    roc_auc(val_scores, test_scores)
    DetectorAwareModel(detector)(test[:8])
    detector.train()
    detector.eval()
    assert float(detector.threshold) == threshold and torch.equal(detector.scales, scales)
    assert detector.fitted_on["images"] == len(validation)


def test_detection_rates_and_roc_auc_are_computed_correctly(
    detector_parts: tuple[ConvVAE, nn.Module, TensorData], mnist_test: TensorData
) -> None:
    vae, clf, validation = detector_parts
    detector = VAEDetector(vae, clf)
    detector.fit_threshold(validation.images)
    clean = mnist_test.images[:100]
    noisy = (
        clean + 0.5 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    ).clamp(0, 1)
    flagged = detector.detect(noisy)
    scores = detector.scores(noisy)
    assert flagged.dtype == torch.bool and torch.equal(flagged, scores > detector.threshold)
    with torch.no_grad():
        assert torch.equal(detector.penalty(noisy) > 0, flagged)
    assert float(flagged.double().mean()) > 0.8  # heavy noise is off the manifold (0.91)
    clean_scores = detector.scores(clean)
    auc = roc_auc(clean_scores, scores)
    brute = float(
        (scores[:, None] > clean_scores[None, :]).double().mean()
        + 0.5 * (scores[:, None] == clean_scores[None, :]).double().mean()
    )
    assert auc == pytest.approx(brute, abs=1e-12) and auc > 0.9
    # ties and the extremes
    a, b = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 3.0])
    assert roc_auc(a, b) == pytest.approx((1.5 + 3) / 6)  # 1 beats 0, ties 1; 3 beats all
    assert roc_auc(b, a) == pytest.approx(1 - (1.5 + 3) / 6)
    assert roc_auc(a, a) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least one"):
        roc_auc(a, torch.tensor([]))


def test_jensen_shannon() -> None:
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    q = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    torch.testing.assert_close(jensen_shannon(p, q), torch.tensor([math.log(2), 0.0]))


def test_detector_score_is_differentiable(
    detector_parts: tuple[ConvVAE, nn.Module, TensorData], mnist_test: TensorData
) -> None:
    vae, clf, validation = copy.deepcopy(detector_parts)
    detector = VAEDetector(vae.double(), clf.double())
    detector.fit_threshold(validation.images[:200].double())
    x = mnist_test.images[:2].double().clamp(0.05, 0.95).requires_grad_(True)
    (grad,) = torch.autograd.grad(detector(x).sum(), x)
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0
    # the gradient agrees with a central difference along a random direction
    d = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    h = 1e-6
    with torch.no_grad():
        numeric = (detector(x + h * d).sum() - detector(x - h * d).sum()) / (2 * h)
    assert float((grad * d).sum()) == pytest.approx(float(numeric), rel=1e-3, abs=1e-6)
    # the detector-aware model's extra logit leads exactly where the detector fires
    aware = DetectorAwareModel(detector, scale=5.0)
    noisy = (x.detach() + 0.4 * d).clamp(0, 1)
    both = torch.cat([x.detach(), noisy])
    with torch.no_grad():
        out = aware(both)
        torch.testing.assert_close(out[:, :10], clf(both))
    assert out.shape == (4, 11)
    assert torch.equal(out.argmax(1) == 10, detector.detect(both))


def test_stadv_and_cw_attack_knowing_the_detector(
    detector_parts: tuple[ConvVAE, nn.Module, TensorData], mnist_test: TensorData
) -> None:
    vae, clf, validation = detector_parts
    detector = VAEDetector(vae, clf)
    detector.fit_threshold(validation.images)
    x, y = mnist_test.images[:4], mnist_test.labels[:4]
    targets = (y + 1) % 10
    attacks = (
        StAdv(max_iterations=30, restarts=0),
        CarliniWagnerL2(
            binary_search_steps=2,
            max_iterations=40,
            learning_rate=0.1,
            initial_const=10.0,
            kappa=0.1,
        ),
    )
    for attack in attacks:
        knowing = attack_knowing_detector(attack, detector, x, y, targets)
        r = knowing.result
        assert r.targets is not None and torch.equal(r.targets, targets)
        # On the K + 1 logit model, success is "classified as the target and not detected".
        assert torch.equal(knowing.evaded, r.success), type(attack).__name__
        assert torch.equal(knowing.detected, detector.detect(r.adv_images))
        assert bool((r.predictions == 10).eq(knowing.detected).all())
        assert int(knowing.evaded.sum()) >= 1  # measured: stAdv 4/4, C&W 2/4
    # untargeted runs as every target; an image counts once
    untargeted = attack_knowing_detector(attacks[0], detector, x[:1], y[:1])
    assert len(untargeted.result) == 9 and untargeted.evaded_images.shape == (1,)
    assert bool(untargeted.evaded_images[0]) == bool(untargeted.evaded.any())


def test_vae_round_trips_through_the_store(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vae = ConvVAE(latent_dim=3).eval()
    info = save_vae(vae, store=tmp_path, meta={"epochs": 1})
    assert info["kind"] == "vae" and info["latent_dim"] == 3 and info["epochs"] == 1
    loaded = load_vae(store=tmp_path)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), vae(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_vae(store=tmp_path / "empty")


# -- prototype conformity loss ---------------------------------------------------------------


def test_prototype_conformity_matches_the_papers_formula() -> None:
    torch.manual_seed(0)
    f, c = torch.randn(5, 3), torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 3, 1])
    expected = []
    for i in range(5):
        own = float(((f[i] - c[y[i]]) ** 2).sum())
        push = sum(
            float(((f[i] - c[j]) ** 2).sum() + ((c[y[i]] - c[j]) ** 2).sum())
            for j in range(4)
            if j != y[i]
        )
        expected.append(2.0 * own - 0.5 / 3 * push)
    value = prototype_conformity(f, y, c, prox_weight=2.0, conprox_weight=0.5)
    assert float(value) == pytest.approx(sum(expected) / 5, rel=1e-5)


def test_pcl_training_lowers_its_loss_and_moves_the_centroids(tiny_train: TensorData) -> None:
    classifier = build_model("B")
    assert default_feature_layers(classifier) == ("6", "4")
    assert default_feature_layers(build_model("A")) == ("7", "1")
    model = PrototypeModel(classifier)
    assert [tuple(c.shape) for c in model.centroids] == [(10, 128), (10, 128)]
    # The centroids are parameters of the model the optimiser sees.
    ids = {id(p) for p in model.parameters()}
    assert all(id(c) in ids for c in model.raw_centroids) and len(model.raw_centroids) == 2
    with pytest.raises(TypeError, match="PrototypeModel"):
        PrototypeConformityLoss()(classifier, tiny_train.images[:4], tiny_train.labels[:4])

    torch.manual_seed(0)
    warm = build_model("B")
    train_model(warm, tiny_train, epochs=1, seed=0, progress=False)
    pcl = PrototypeModel(warm)
    pcl.init_centroids(tiny_train)
    start = [c.detach().clone() for c in pcl.centroids]
    loss = PrototypeConformityLoss()
    before = _loss_on(loss, pcl, tiny_train)
    train_model(pcl, tiny_train, epochs=2, lr=1e-4, seed=1, loss_fn=loss, progress=False)
    after = _loss_on(loss, pcl, tiny_train)
    assert after < 0.9 * before, (before, after)  # measured: 5.26 -> 4.4
    moved = [float((c.detach() - s).abs().max()) for c, s in zip(pcl.centroids, start, strict=True)]
    assert all(m > 1e-3 for m in moved), moved
    with torch.no_grad():
        torch.testing.assert_close(pcl(tiny_train.images[:8]), warm(tiny_train.images[:8]))


def test_train_pcl_with_and_without_pgd(tiny_train: TensorData, mnist_test: TensorData) -> None:
    data = tiny_train.slice(0, 256)
    pgd = PGDAdversarialLoss(epsilon=0.3, alpha=0.1, steps=2)
    for adversarial in (None, pgd):
        model, report = train_pcl(
            "B", data, warmup_epochs=1, epochs=1, adversarial=adversarial, seed=0
        )
        assert report.warmup is not None and report.adversarial is (adversarial is not None)
        assert not model.training and math.isfinite(report.pcl.final_loss)
        assert evaluate(model.classifier, mnist_test.slice(0, 200)) > 0.3

    # With PGD, the loss sees the clean and the adversarial rows together.
    batch_sizes: list[int] = []
    pcl = PrototypeModel(build_model("B"))

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        batch_sizes.append(inputs[0].shape[0])

    handle = pcl.classifier.register_forward_pre_hook(record)
    value = PrototypeConformityLoss(adversarial=pgd)(pcl, data.images[:8], data.labels[:8])
    handle.remove()
    assert batch_sizes[-1] == 16 and 8 in batch_sizes[:-1] and value.requires_grad


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: TemperatureCrossEntropy(temperature=0.0), "temperature"),
        (lambda: DistillationLoss(teacher="B", temperature=10.0), "teacher"),  # type: ignore[arg-type]
        (lambda: distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4), 1.0), "shape"),
        (lambda: ConvVAE(latent_dim=0), "latent_dim"),
        (lambda: VAELoss(beta=-1.0), "beta"),
        (lambda: VAEDetector(ConvVAE(), build_model("B"), temperature=-1.0), "temperature"),
        (
            lambda: VAEDetector(
                ConvVAE(), build_model("B"), use_reconstruction=False, use_divergence=False
            ),
            "both",
        ),
        (
            lambda: VAEDetector(ConvVAE(), build_model("B")).fit_threshold(
                torch.rand(10, 1, 28, 28), fpr=1.0
            ),
            "fpr",
        ),
        (lambda: validation_split(TensorData(torch.zeros(3, 1, 28, 28), torch.zeros(3)), 3), "<"),
        (lambda: PrototypeModel(build_model("B"), feature_layers=("nope",)), "nope"),
        (lambda: PrototypeConformityLoss(prox_weight=-1.0), "prox_weight"),
        (lambda: PrototypeConformityLoss(adversarial="pgd"), "adversarial"),  # type: ignore[arg-type]
    ],
)
def test_bad_values_raise_value_error(factory: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


def test_new_defenses_import_neither_ray_nor_mlflow() -> None:
    code = (
        "import sys\n"
        "import defenses.distillation, defenses.vae_detector, defenses.prototype\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow'))\n"
        "assert 'defenses.prototype' in sys.modules and not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# -- benchmarks/new_defenses.py --------------------------------------------------------------


def test_benchmark_script_runs_and_writes_consistent_json(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "new_defenses.json"
    small = ["--n-train", "256", "--n-validation", "64", "--n-attack", "3", "--n-clean", "50"]
    fast = ["--cw-steps", "1", "--cw-iterations", "5", "--vae-epochs", "1"]
    argv = [sys.executable, str(REPO / "benchmarks" / "new_defenses.py"), *small, *fast]
    run = subprocess.run(
        [*argv, "--data-dir", str(data_root), "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "QUICK-MODEL NUMBERS" in run.stdout and "ROC AUC" in run.stdout
    report = json.loads(out.read_text())
    assert {"baseline", "distilled", "vae_detector", "pcl", "environment"} <= report.keys()
    env = report["environment"]
    assert {"torch", "device", "threads", "n_train", "n_attack"} <= env.keys()
    assert "quick-model" in env["note"]

    def check_rate(r: dict[str, float], n: int) -> None:
        assert r["n"] == n and r["ci_low"] <= r["rate"] <= r["ci_high"]

    for name in ("baseline", "distilled"):
        check_rate(report[name]["fgsm_success"], 3)
        check_rate(report[name]["cw_success"], 3)
    det = report["vae_detector"]
    check_rate(det["fpr_test"], 50)
    assert det["fitted_on"]["images"] == 64 and det["fpr_validation"] <= 0.05
    assert 0.0 <= det["fgsm"]["roc_auc"] <= 1.0 and 0.0 <= det["pgd"]["roc_auc"] <= 1.0
    bad = subprocess.run([*argv, "--n-attack", "0"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "--n-attack" in bad.stderr
