"""Defenses: adversarial training losses, Gaussian blur, the denoiser, the store and the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from defenses import (
    DEFENSES,
    DenoisingAutoencoder,
    EnsembleAdversarialLoss,
    FGSMAdversarialLoss,
    GaussianBlur,
    PGDAdversarialLoss,
    defended_model,
    defense_variant,
    load_denoiser,
)
from defenses.adversarial_training import fgsm_examples
from defenses.denoiser import (
    DenoisingLoss,
    denoiser_path,
    denoising_error,
    save_denoiser,
    train_denoiser,
)
from stadv.data import TensorData
from stadv.fgsm import FGSM
from stadv.models import build_model
from stadv.pgd import PGD
from stadv.store import CheckpointError, checkpoint_path, read_info
from stadv.train import evaluate, train_model
from stadv_cli.defense import defense_training
from stadv_cli.main import build_parser, main


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


# -- adversarial training ------------------------------------------------------------------


def test_fgsm_adversarial_training_lowers_fgsm_success(
    mnist_train_small: TensorData, mnist_test: TensorData, tiny_model_b: nn.Module
) -> None:
    """Model B, 5,000 real training images, 1 epoch: the same recipe as ``tiny_model_b`` but with
    Tramèr et al.'s FGSM adversarial training (eps 0.3, half clean, half adversarial)."""
    torch.manual_seed(0)
    defended = build_model("B")
    train_model(
        defended, mnist_train_small, epochs=1, seed=0, loss_fn=FGSMAdversarialLoss(), progress=False
    )
    x, y = mnist_test.images[:300], mnist_test.labels[:300]
    attack = FGSM(epsilon=0.3)
    plain = attack(tiny_model_b, x, y).success_rate
    robust = attack(defended, x, y).success_rate
    assert _accuracy(defended, x, y) > 0.85  # still a classifier
    assert plain > 0.95  # measured: 1.00
    assert robust < plain - 0.15, (plain, robust)  # measured: 0.75


def test_attack_generation_runs_in_eval_mode_without_parameter_gradients() -> None:
    seen: list[tuple[bool, bool, bool]] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(16, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((x.requires_grad, self.training, self.net[2].weight.requires_grad))
            out: torch.Tensor = self.net(x)
            return out

    model = Spy().train()
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 3])
    for loss_fn in (
        FGSMAdversarialLoss(),
        PGDAdversarialLoss(steps=3),
        EnsembleAdversarialLoss(static_models=(Spy(),)),
    ):
        seen.clear()
        loss = loss_fn(model, x, y)
        crafting = [s for s in seen if s[0]]
        training = [s for s in seen if not s[0]]
        if not isinstance(loss_fn, EnsembleAdversarialLoss):
            assert crafting, "the attack must differentiate the model w.r.t. its input"
        assert all(not training_flag and not grad_flag for _, training_flag, grad_flag in crafting)
        # The training loss itself is computed in training mode, with parameter gradients.
        assert training and training[-1][1:] == (True, True)
        loss.backward()
        assert model.net[2].weight.grad is not None and bool(
            model.net[2].weight.grad.abs().sum() > 0
        )
        model.zero_grad()
        assert model.training and all(p.requires_grad for p in model.parameters())


def test_fgsm_examples_use_the_models_predictions(
    tiny_model_b: nn.Module, mnist_test: TensorData
) -> None:
    x = mnist_test.images[:64]
    with torch.no_grad():
        pred = tiny_model_b(x).argmax(1)
    wrong = (pred + 1) % 10
    own = fgsm_examples(tiny_model_b, x, epsilon=0.3)
    assert torch.equal(own, fgsm_examples(tiny_model_b, x, epsilon=0.3, labels=pred))
    assert not torch.equal(own, fgsm_examples(tiny_model_b, x, epsilon=0.3, labels=wrong))
    assert float((own - x).abs().max()) <= 0.3 + 1e-6 and own.min() >= 0 and own.max() <= 1


def test_loss_mixes_clean_and_adversarial_cross_entropy(
    tiny_model_b: nn.Module, mnist_test: TensorData
) -> None:
    x, y = mnist_test.images[:32], mnist_test.labels[:32]
    model = tiny_model_b.eval()  # eval mode: the loss is deterministic
    adv = fgsm_examples(model, x, epsilon=0.3)
    with torch.no_grad():
        clean_ce, adv_ce = F.cross_entropy(model(x), y), F.cross_entropy(model(adv), y)
        half = FGSMAdversarialLoss(epsilon=0.3)(model, x, y)
        only_clean = FGSMAdversarialLoss(epsilon=0.3, adv_weight=0.0)(model, x, y)
    torch.testing.assert_close(half, 0.5 * clean_ce + 0.5 * adv_ce)
    torch.testing.assert_close(only_clean, clean_ce)
    assert float(adv_ce) > 2 * float(clean_ce)

    pgd = PGDAdversarialLoss(epsilon=0.3, alpha=0.05, steps=5, random_start=False)
    expected = PGD(epsilon=0.3, alpha=0.05, steps=5, random_start=False, check=False)(
        model, x, y
    ).adv_images
    with torch.no_grad():
        torch.testing.assert_close(pgd(model, x, y), F.cross_entropy(model(expected), y))


def test_pgd_training_loss_random_start_follows_the_global_seed(
    tiny_model_b: nn.Module, mnist_test: TensorData
) -> None:
    x, y = mnist_test.images[:8], mnist_test.labels[:8]
    loss = PGDAdversarialLoss(steps=1, alpha=0.01)
    model = tiny_model_b.eval()
    values = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        with torch.no_grad():
            values.append(float(loss(model, x, y)))
    assert values[0] == values[1] != values[2]


def test_ensemble_loss_draws_sources_and_leaves_static_models_alone(
    tiny_model_b: nn.Module, mnist_test: TensorData, mnist_train_small: TensorData
) -> None:
    x, y = mnist_test.images[:32], mnist_test.labels[:32]
    torch.manual_seed(1)
    static = build_model("A").eval()  # an untrained "other architecture": its examples differ
    loss = EnsembleAdversarialLoss(static_models=(static,), epsilon=0.3)
    model = tiny_model_b.eval()
    with torch.no_grad():
        own_value = FGSMAdversarialLoss(epsilon=0.3)(model, x, y)
        static_adv = fgsm_examples(static, x, epsilon=0.3)
        static_value = 0.5 * F.cross_entropy(model(x), y) + 0.5 * F.cross_entropy(
            model(static_adv), y
        )
    assert not torch.allclose(own_value, static_value)
    torch.manual_seed(0)
    sources = set()
    for _ in range(12):
        with torch.no_grad():
            value = loss(model, x, y)
        if torch.allclose(value, own_value):
            sources.add("own")
        elif torch.allclose(value, static_value):
            sources.add("static")
        else:
            pytest.fail(f"loss {float(value)} matches neither source")
    assert sources == {"own", "static"}

    before = [p.detach().clone() for p in static.parameters()]
    torch.manual_seed(0)
    student = build_model("B")
    train_model(student, mnist_train_small, epochs=1, max_batches=5, loss_fn=loss, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(static.parameters(), before, strict=True))


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: FGSMAdversarialLoss(epsilon=-0.1), "epsilon"),
        (lambda: FGSMAdversarialLoss(adv_weight=1.5), "adv_weight"),
        (lambda: FGSMAdversarialLoss(adv_weight=-0.5), "adv_weight"),
        (lambda: PGDAdversarialLoss(steps=0), "steps"),
        (lambda: PGDAdversarialLoss(alpha=0.0), "alpha"),
        (lambda: PGDAdversarialLoss(epsilon=float("nan")), "epsilon"),
        (lambda: EnsembleAdversarialLoss(static_models=()), "static_models"),
        (lambda: EnsembleAdversarialLoss(static_models=("A",)), "static_models"),  # type: ignore[arg-type]
        (lambda: GaussianBlur(kernel_size=2), "odd"),
        (lambda: GaussianBlur(kernel_size=0), "kernel_size"),
        (lambda: GaussianBlur(sigma=0.0), "sigma"),
        (lambda: GaussianBlur(sigma=-1.0), "sigma"),
        (lambda: DenoisingAutoencoder(channels=0), "channels"),
        (lambda: DenoisingLoss(noise_std=-0.1), "noise_std"),
        (lambda: defense_variant("blur"), "blur"),
        (lambda: defended_model("B", "magic"), "magic"),
        (lambda: defended_model("B", "blur", blur_kernel_size=4), "odd"),
    ],
)
def test_bad_values_raise_value_error(factory: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


# -- pre-processing defenses ---------------------------------------------------------------


@pytest.mark.parametrize(("kernel_size", "sigma"), [(3, 1.0), (5, 0.7), (7, 2.0)])
def test_blur_matches_torchvision(kernel_size: int, sigma: float) -> None:
    x = torch.rand(3, 2, 28, 28)
    ours = GaussianBlur(kernel_size=kernel_size, sigma=sigma)(x)
    ref = gaussian_blur(x, [kernel_size, kernel_size], [sigma, sigma])  # reflect padding too
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def test_blur_identity_constant_and_no_state() -> None:
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(GaussianBlur(kernel_size=1, sigma=1.0)(x), x)
    const = torch.full((1, 3, 10, 10), 0.4)
    torch.testing.assert_close(GaussianBlur(kernel_size=5, sigma=3.0)(const), const)
    blurred = GaussianBlur(kernel_size=5, sigma=1.0)(x)
    assert blurred.shape == x.shape and float((blurred - x).abs().max()) > 0.01
    model = build_model("B")
    assert nn.Sequential(GaussianBlur(), model).state_dict().keys() == {
        f"1.{k}" for k in model.state_dict()
    }


def test_blur_passes_gradients() -> None:
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    blur = GaussianBlur(kernel_size=3, sigma=1.0)
    assert torch.autograd.gradcheck(blur, (x,))


def test_denoiser_passes_gradients() -> None:
    torch.manual_seed(0)
    dae = DenoisingAutoencoder(channels=4).double()
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dae, (x,), eps=1e-6, atol=1e-4)


def test_attacks_see_through_preprocessing(tiny_model_b: nn.Module, mnist_test: TensorData) -> None:
    x, y = mnist_test.images[:64], mnist_test.labels[:64]
    torch.manual_seed(0)
    for pre in (GaussianBlur(kernel_size=3, sigma=1.0), DenoisingAutoencoder(channels=8)):
        defended = nn.Sequential(pre, tiny_model_b).eval()
        r = FGSM(epsilon=0.3)(defended, x, y)
        assert r.extra["zero_gradients"] == 0
        with torch.no_grad():
            pred = defended(r.adv_images).argmax(1)
        assert torch.equal(r.success, pred != y)
    # A white-box attack through the blur still breaks the blurred model.
    blurred = nn.Sequential(GaussianBlur(kernel_size=3, sigma=1.0), tiny_model_b).eval()
    r = PGD(epsilon=0.3, alpha=0.05, steps=10)(blurred, x, y)
    assert r.success_rate > 0.9
    assert _accuracy(blurred, x, y) > 0.8


def test_denoiser_training_denoises_and_round_trips(
    mnist_train_small: TensorData, mnist_test: TensorData, tmp_path: Path
) -> None:
    model, report = train_denoiser(
        mnist_train_small, noise_std=0.5, channels=16, epochs=1, lr=3e-3, seed=0
    )
    assert not model.training and len(report.losses) == 1
    test = mnist_test.slice(0, 500)
    noisy, denoised = denoising_error(model, test, noise_std=0.5)
    assert denoised < 0.5 * noisy, (noisy, denoised)  # measured: 0.043 vs 0.115
    info = save_denoiser(model, store=tmp_path, meta={"noise_std": 0.5})
    assert info["kind"] == "denoiser" and info["noise_std"] == 0.5 and len(info["sha256"]) == 64
    loaded = load_denoiser(store=tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(test.images[:8]), model(test.images[:8]), atol=0, rtol=0)
    path = denoiser_path(store=tmp_path)
    assert path.name == "mnist-denoiser.pt"
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_denoiser(store=tmp_path)
    with pytest.raises(CheckpointError, match="train-denoiser"):
        load_denoiser(store=tmp_path / "empty")


# -- store and command line ------------------------------------------------------------------


def _common(tmp_path: Path, data_root: Path) -> list[str]:
    return ["--no-download", "--data-dir", str(data_root), "--store", str(tmp_path / "store")]


def test_cli_trains_defended_models_into_the_store(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str], mnist_test: TensorData
) -> None:
    common = _common(tmp_path, data_root)
    base = ["train", "--model", "B", "--epochs", "1", "--train-limit", "600", "--quiet", *common]
    assert main(base) == 0
    assert main([*base, "--defense", "fgsm", "--adv-epsilon", "0.2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert "variant" not in rows[0] and rows[1]["variant"] == "adv-fgsm"
    path = checkpoint_path("B", "mnist", store=tmp_path / "store", variant="adv-fgsm")
    info = read_info(path)
    assert info.variant == "adv-fgsm" and info.extra["defense"] == "fgsm"
    assert (
        info.extra["defense_params"]["epsilon"] == 0.2
        and info.extra["defense_params"]["adv_weight"] == 0.5
    )
    store = tmp_path / "store"
    adv_model = defended_model("B", "fgsm", store=store, device="cpu")
    plain_model = defended_model("B", "none", store=store, device="cpu")
    test = mnist_test.slice(0, 200)
    assert evaluate(adv_model, test) == pytest.approx(info.test_accuracy, abs=0.1)
    assert any(
        not torch.equal(p, q)
        for p, q in zip(adv_model.parameters(), plain_model.parameters(), strict=True)
    )
    blurred = defended_model(
        "B", "blur", store=store, device="cpu", blur_kernel_size=5, blur_sigma=2.0
    )
    assert (
        isinstance(blurred, nn.Sequential)
        and isinstance(blurred[0], GaussianBlur)
        and blurred[0].kernel_size == 5
    )
    with pytest.raises(CheckpointError, match="--defense pgd"):
        defended_model("B", "pgd", store=store, device="cpu")
    with pytest.raises(CheckpointError, match="train-denoiser"):
        defended_model("B", "denoiser", store=store, device="cpu")

    assert (
        main(
            [
                "train-denoiser",
                "--epochs",
                "1",
                "--train-limit",
                "300",
                "--channels",
                "8",
                "--quiet",
                *common,
            ]
        )
        == 0
    )
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["noise_std"] == 0.1 and row["test_noisy_mse"] > 0 and row["test_denoised_mse"] > 0
    assert Path(row["denoiser"]) == store / "mnist-denoiser.pt" and Path(row["denoiser"]).is_file()
    denoised = defended_model("B", "denoiser", store=store, device="cpu")
    assert isinstance(denoised, nn.Sequential) and isinstance(denoised[0], DenoisingAutoencoder)
    assert set(DEFENSES) == {
        *("none", "fgsm", "pgd", "ensemble", "blur", "denoiser"),
        *("distillation", "pcl", "pcl-pgd", "vae"),
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--defense", "bogus"], "bogus"),
        (["--adv-epsilon", "-0.3"], "--adv-epsilon"),
        (["--defense", "fgsm", "--adv-weight", "2"], "--adv-weight"),
        (["--defense", "pgd", "--pgd-steps", "0"], "--pgd-steps"),
        (["--defense", "pgd", "--pgd-alpha", "0"], "--pgd-alpha"),
        (["--defense", "ensemble", "--static-models", "A,Z"], "'Z'"),
        (["--defense", "ensemble", "--static-models", ","], "--static-models"),
    ],
)
def test_cli_rejects_bad_defense_options(
    tmp_path: Path,
    data_root: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    argv = [
        "train",
        "--model",
        "B",
        "--epochs",
        "1",
        "--train-limit",
        "64",
        "--quiet",
        *_common(tmp_path, data_root),
        *extra,
    ]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "store").exists()  # nothing trained


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--noise-std", "-1"], "--noise-std"), (["--channels", "0"], "--channels")],
)
def test_cli_rejects_bad_denoiser_options(
    tmp_path: Path,
    data_root: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    assert main(["train-denoiser", "--quiet", *_common(tmp_path, data_root), *extra]) == 2
    assert message in capsys.readouterr().err


def test_defense_training_builds_the_losses() -> None:
    parser = build_parser()

    def args(*extra: str) -> argparse.Namespace:
        return parser.parse_args(["train", "--model", "B", *extra])

    assert (
        defense_training(args(), "B").loss_fn is None
        and defense_training(args(), "B").variant == ""
    )
    fgsm = defense_training(args("--defense", "fgsm"), "B")
    assert (
        fgsm.loss_fn == FGSMAdversarialLoss(epsilon=0.3, adv_weight=0.5)
        and fgsm.variant == "adv-fgsm"
    )
    pgd = defense_training(
        args("--defense", "pgd", "--pgd-steps", "7", "--adv-epsilon", "0.1"), "B"
    )
    assert pgd.loss_fn == PGDAdversarialLoss(epsilon=0.1, alpha=0.01, steps=7, adv_weight=1.0)
    assert pgd.variant == "adv-pgd" and pgd.extra["defense_params"]["steps"] == 7


def test_build_defense_training_is_the_library_function_behind_the_cli() -> None:
    from defenses.registry import build_defense_training

    assert build_defense_training("none", model_name="B") == defense_training(
        build_parser().parse_args(["train", "--model", "B"]), "B"
    )
    pgd = build_defense_training("pgd", model_name="b", epsilon=0.1, pgd_steps=7)
    assert pgd.loss_fn == PGDAdversarialLoss(epsilon=0.1, alpha=0.01, steps=7, adv_weight=1.0)
    assert pgd.variant == "adv-pgd" and pgd.extra == {
        "defense": "pgd",
        "defense_params": {
            "epsilon": 0.1,
            "alpha": 0.01,
            "steps": 7,
            "random_start": True,
            "adv_weight": 1.0,
            "bounds": (0.0, 1.0),
        },
    }
    fgsm = build_defense_training("fgsm", model_name="A", adv_weight=0.25)
    assert fgsm.loss_fn == FGSMAdversarialLoss(epsilon=0.3, adv_weight=0.25)
    for kwargs, match in (
        ({"defense": "mixup"}, "unknown defense 'mixup'"),
        ({"defense": "fgsm", "adv_weight": 1.5}, "adv_weight must lie in"),
        ({"defense": "none", "pgd_steps": 0}, "pgd_steps must be an integer >= 1"),
        ({"defense": "ensemble", "static_models": []}, "static_models must name at least one"),
        ({"defense": "ensemble", "static_models": ["Z"]}, "unknown model 'Z'"),
    ):
        with pytest.raises(ValueError, match=match):
            build_defense_training(model_name="B", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train_limit": 0}, "train_limit must be an integer >= 1, got 0"),
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"noise_std": -0.1}, "noise_std must be a finite number >= 0"),
        ({"variant": "../x"}, "variant '../x'"),
    ],
)
def test_train_and_store_denoiser_refuses_bad_arguments_before_any_work(
    tmp_path: Path, data_root: Path, kwargs: dict[str, object], match: str
) -> None:
    from defenses.denoiser import train_and_store_denoiser

    with pytest.raises(ValueError, match=match):
        train_and_store_denoiser(
            "mnist",
            store=tmp_path / "store",
            data_dir=data_root,
            device="cpu",
            **kwargs,  # type: ignore[arg-type]
        )
    assert not (tmp_path / "store").exists()
