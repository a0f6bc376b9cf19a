"""Distillation, PCL and the VAE detector as registered defenses (``stadv train --defense``, the
defense sweep's rows) and the new attacks' columns of the defense table: tiny data, CPU,
seconds each, no Ray."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from defenses import defended_model
from defenses.base import DefenseContext, StoredDefenseMismatch, from_settings, is_detector
from defenses.distillation import AdamAt, DistillationDefense, DistillationLoss
from defenses.prototype import PCLPGDTraining, PCLTrainer, PCLTraining
from defenses.registry import DEFENSES, TRAINING_DEFENSES, build_defense_training
from defenses.vae_defense import ADAPTIVE_ATTACKS, DetectorMetrics, VAEDetectorDefense
from defenses.vae_detector import _fingerprint
from stadv.data import TensorData, load_tensors
from stadv.deepfool import DeepFool
from stadv.fgsm import FGSM
from stadv.models import build_model
from stadv.store import CheckpointError, checkpoint_path, load_checkpoint, train_and_store
from stadv_cli.main import main
from stadv_sweeps.engine.errors import SweepError
from stadv_sweeps.plans import defense_spec as spec_mod
from stadv_sweeps.plans import defense_table
from stadv_sweeps.plans.defense_models import DefendedModels

NEW_DEFENSES = ("distillation", "pcl", "pcl-pgd", "vae")
NEW_ATTACKS = ("deepfool", "jsma", "few-pixel")


def _ctx(store: Path, data_root: Path, **kw: Any) -> DefenseContext:
    return DefenseContext(store=store, data_dir=data_root, device="cpu", **kw)


def test_registry_lists_the_new_defenses() -> None:
    assert set(NEW_DEFENSES) <= set(DEFENSES)
    assert {"distillation", "pcl", "pcl-pgd"} <= set(TRAINING_DEFENSES)
    assert "vae" not in TRAINING_DEFENSES and is_detector(DEFENSES["vae"])
    assert not any(is_detector(DEFENSES[d]) for d in DEFENSES if d != "vae")
    made = from_settings(PCLPGDTraining, {"pcl-pgd_steps": 7, "epsilon": 0.2, "steps": 99})
    assert made.steps == 7 and made.epsilon == 0.2  # its own key wins over the shared one


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: DistillationDefense(temperature=0.0), "temperature"),
        (lambda: DistillationDefense(epochs=0), "epochs"),
        (lambda: DistillationDefense(lr=-1.0), "lr"),
        (lambda: PCLTraining(warmup_epochs=-1), "warmup_epochs"),
        (lambda: PCLTraining(lr=0.0), "lr"),
        (lambda: PCLPGDTraining(steps=0), "steps"),
        (lambda: PCLPGDTraining(alpha=-1.0), "alpha"),
        (lambda: VAEDetectorDefense(fpr=1.5), "1.5"),
        (lambda: VAEDetectorDefense(train_limit=50, n_validation=100), "n_validation"),
        (lambda: VAEDetectorDefense(latent_dim=0), "latent_dim"),
        (
            lambda: build_defense_training(
                "distillation", model_name="B", options={"distillation_temperature": -3.0}
            ),
            "-3.0",
        ),
        (lambda: build_defense_training("vae", model_name="B"), "unknown defense .vae."),
    ],
)
def test_bad_options_raise_value_error_naming_them(factory: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


def test_pcl_trainer_refuses_a_learning_rate_decay(tiny_train: TensorData) -> None:
    trainer = PCLTrainer(model_name="B", warmup_epochs=0)
    common: dict[str, Any] = {"seed": 0, "device": None, "loss_fn": None, "progress": False}
    with pytest.raises(ValueError, match="lr_decay_epochs must be 0, got 1"):
        trainer(build_model("B"), tiny_train, epochs=2, lr_decay_epochs=1, **common)


@pytest.fixture(scope="module")
def tiny_train(mnist_train_small: TensorData) -> TensorData:
    return mnist_train_small.slice(0, 256)


def test_distillation_trains_a_teacher_once_and_a_student(data_root: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    defense = DistillationDefense(temperature=20.0, train_limit=200, epochs=1, seed=3)
    recipe = defense.training("B", _ctx(store, data_root, variant="tiny"))
    assert recipe is not None and recipe.variant == "distilled-tiny"
    assert isinstance(recipe.trainer, AdamAt) and recipe.trainer.lr == 1e-2
    assert recipe.params == {
        "temperature": 20.0,
        "lr": 1e-2,
        "teacher_variant": "distill-teacher-tiny",
        "teacher_seed": 4,
    }
    teacher_path = checkpoint_path("B", "mnist", store=store, variant="distill-teacher-tiny")
    assert not teacher_path.exists()  # nothing is trained before the loss is asked for
    loss = recipe.make_loss()
    assert isinstance(loss, DistillationLoss) and loss.temperature == 20.0
    teacher_info = json.loads(teacher_path.with_suffix(".json").read_text())
    assert teacher_info["seed"] == 4 and teacher_info["extra"]["train_images"] == 200
    assert teacher_info["extra"]["defense_params"] == {
        "temperature": 20.0,
        "lr": 1e-2,
        "role": "teacher",
    }
    stamp = teacher_path.stat().st_mtime_ns
    recipe.make_loss()  # the stored teacher is reused, not trained again
    assert teacher_path.stat().st_mtime_ns == stamp

    student, info = train_and_store(
        "B",
        store=store,
        data_dir=data_root,
        epochs=recipe.epochs,
        train_limit=recipe.train_limit,
        seed=recipe.seed,
        variant=recipe.variant,
        loss_fn=loss,
        extra={"defense": "distillation", "defense_params": recipe.params},
        progress=False,
        trainer=recipe.trainer,
    )
    loaded, _ = load_checkpoint(
        checkpoint_path("B", "mnist", store=store, variant="distilled-tiny")
    )
    x = load_tensors("mnist", split="test", data_dir=data_root).images[:4]
    with torch.no_grad():  # the stored model is the student: raw logits, read at T = 1
        torch.testing.assert_close(loaded(x), student.cpu()(x))
    assert info.extra["defense_params"]["temperature"] == 20.0

    other = DistillationDefense(temperature=100.0, train_limit=200, epochs=1, seed=3)
    again = other.training("B", _ctx(store, data_root, variant="tiny"))
    assert again is not None
    with pytest.raises(StoredDefenseMismatch, match="temperature=20.0 but 100.0"):
        again.make_loss()
    missing = other.training("B", _ctx(tmp_path / "empty", data_root, train=False))
    assert missing is not None
    with pytest.raises(
        CheckpointError, match="stadv train --model B --dataset mnist --defense distil"
    ):
        missing.make_loss()


@pytest.mark.parametrize("name", ["pcl", "pcl-pgd"])
def test_pcl_trains_and_stores_the_plain_classifier(
    name: str, data_root: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    setup = build_defense_training(
        name,
        model_name="B",
        epochs=1,
        train_limit=128,
        options={f"{name}_warmup_epochs": 1, "pcl-pgd_steps": 2, "pcl-pgd_alpha": 0.1},
        store=store,
        data_dir=data_root,
    )
    assert setup.loss_fn is None and isinstance(setup.trainer, PCLTrainer)
    assert (setup.trainer.adversarial is not None) is (name == "pcl-pgd")
    model, info = train_and_store(
        "B",
        store=store,
        data_dir=data_root,
        epochs=1,
        train_limit=128,
        variant=setup.variant,
        extra=setup.extra,
        trainer=setup.trainer,
        progress=False,
    )
    assert setup.variant == name and info.variant == name
    assert info.extra["lr_decay_epochs"] == 0 and len(info.extra["epoch_losses"]) == 2  # warm-up
    params = info.extra["defense_params"]
    assert params["warmup_epochs"] == 1 and params["feature_layers"] == ["6", "4"]
    assert ("steps" in params) is (name == "pcl-pgd")
    path = checkpoint_path("B", "mnist", store=store, variant=name)
    state = torch.load(path, weights_only=True)
    assert set(state) == set(build_model("B").state_dict())  # no centroids kept
    assert all(math.isfinite(v) for v in info.extra["epoch_losses"])


def test_cli_trains_a_distilled_model_end_to_end(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    argv = ["train", "--model", "B", "--train-limit", "200", "--epochs", "1", "--quiet"]
    where = ["--store", str(store), "--data-dir", str(data_root)]
    assert main([*argv, *where, "--defense", "distillation"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["variant"] == "distilled" and row["epochs"] == 1
    sidecar = json.loads((store / "mnist-B-distilled.json").read_text())
    assert sidecar["extra"]["defense"] == "distillation"
    assert sidecar["extra"]["defense_params"]["temperature"] == 100.0
    assert sidecar["extra"]["train_images"] == 200
    teacher = json.loads((store / "mnist-B-distill-teacher.json").read_text())
    assert teacher["extra"]["train_images"] == 200 and teacher["epochs"] == 1
    load_checkpoint(store / "mnist-B-distilled.pt", model_name="B")  # checksum, weights_only
    distilled = defended_model("B", "distillation", store=store, data_dir=data_root, device="cpu")
    assert not distilled.training
    with pytest.raises(ValueError, match="'vae' is a detector"):
        defended_model("B", "vae", store=store, data_dir=data_root)
    with pytest.raises(CheckpointError, match="--defense pcl"):
        defended_model("B", "pcl", store=store, data_dir=data_root)

    bad = [
        (["--defense", "distillation", "--distillation-temperature", "0"], "temperature"),
        (["--defense", "pcl", "--distillation-temperature", "5"], "only apply with"),
        (["--defense", "pcl", "--pcl-warmup-epochs", "x"], "'x'"),
    ]
    for extra, message in bad:
        assert main([*argv, *where, *extra]) == 2
        assert message in capsys.readouterr().err


def test_cli_trains_the_vae_and_fits_its_threshold(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--store", str(tmp_path / "store"), "--data-dir", str(data_root)]
    model = ["train", "--model", "B", "--train-limit", "200", "--epochs", "1", "--quiet"]
    assert main([*model, *where]) == 0
    vae = ["train-vae", "--epochs", "1", "--train-limit", "600", "--n-validation", "100"]
    assert main([*vae, "--quiet", "--model", "B", *where]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["train_images"] == 500 and row["validation_images"] == 100
    assert Path(row["vae"]) == tmp_path / "store" / "mnist-vae.pt" and Path(row["vae"]).is_file()
    assert row["fpr_validation"] <= 0.05 and 0.0 <= row["fpr_test_first_1000"] <= 1.0
    assert main([*vae, "--fpr", "2", *where]) == 2
    assert "fpr must lie in (0, 1), got 2.0" in capsys.readouterr().err


def test_vae_detector_is_stored_once_and_fitted_on_validation_images(
    data_root: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    defense = VAEDetectorDefense(epochs=1, train_limit=600, n_validation=100)
    ctx = _ctx(store, data_root, variant="tiny")
    classifier = build_model("B").eval()
    detector = defense.detector(classifier, ctx)
    path = store / "mnist-vae-tiny.pt"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["train_images"] == 500 and meta["n_validation"] == 100 and meta["epochs"] == 1
    train = load_tensors("mnist", split="train", data_dir=data_root)
    # the threshold came from the last 100 of the 600 training images, never test images
    assert detector.fitted_on["images"] == 100
    assert detector.fitted_on["sha256"] == _fingerprint(train.images[500:600])
    assert detector.fitted and detector.fitted_on["fpr"] <= 0.05
    stamp = path.stat().st_mtime_ns
    again = defense.detector(classifier, ctx)
    assert path.stat().st_mtime_ns == stamp and float(again.threshold) == float(detector.threshold)
    with pytest.raises(StoredDefenseMismatch, match="epochs=1 but 2"):
        VAEDetectorDefense(epochs=2, train_limit=600, n_validation=100).detector(classifier, ctx)


def test_detector_metrics_of_an_attack(
    data_root: Path, tmp_path: Path, tiny_model_b: torch.nn.Module, mnist_test: TensorData
) -> None:
    defense = VAEDetectorDefense(epochs=1, train_limit=600, n_validation=100)
    detector = defense.detector(tiny_model_b, _ctx(tmp_path / "store", data_root))
    report = DetectorMetrics(detector)
    x, y = mnist_test.images[:6], mnist_test.labels[:6]
    fgsm = FGSM(epsilon=0.3)
    result = fgsm(tiny_model_b, x, y, targets="random")
    out = report("fgsm", fgsm, x, y, "random", result)
    assert "fgsm" in ADAPTIVE_ATTACKS and out["detection_attacks"] == float(result.success.sum())
    for name in ("detection_rate", "adaptive_success_rate", "roc_auc", "detector_fpr_test"):
        value = out[name]
        assert math.isnan(value) or 0.0 <= value <= 1.0, (name, value)
    assert out["adaptive_success_ci_low"] <= out["adaptive_success_rate"]
    deepfool = DeepFool(max_iterations=5)
    untargeted = deepfool(tiny_model_b, x, y)
    out = report("deepfool", deepfool, x, y, None, untargeted)
    assert math.isnan(out["adaptive_success_rate"])  # DeepFool is not run knowing the detector
    assert out["detection_attacks"] == float((untargeted.predictions != y).sum())


def test_defense_sweep_spec_has_the_new_rows_and_columns() -> None:
    spec = spec_mod.DefenseSpec(sweep="defenses")
    assert set(NEW_DEFENSES) <= set(spec.defenses) and set(NEW_ATTACKS) <= set(spec.attacks)
    for preset in ("cpu", "smoke", "paper"):
        settings = spec_mod.PRESETS[preset]
        for defense in NEW_DEFENSES:
            settings.defense(defense)  # every new defense builds under every preset
    cpu = spec_mod.PRESETS["cpu"]
    assert spec_mod.variant("distillation", cpu) == "distilled-cpu"
    assert spec_mod.variant("pcl-pgd", cpu) == "pcl-pgd-cpu"
    assert spec_mod.variant("vae", cpu) == "cpu"
    assert spec_mod.variant("pcl", spec_mod.PRESETS["paper"]) == "pcl"
    assert cpu.defense("pcl-pgd").steps == 20 and cpu.defense("vae").n_validation == 1000
    assert spec_mod.ATTACK_OPTIONS["few-pixel"]["pixels"] == 3
    assert spec_mod.PAPER_ATTACK_OPTIONS["few-pixel"] == {"population": 400, "generations": 100}

    smoke = spec_mod.DefenseSpec(
        sweep="defenses",
        models=("B",),
        attack_options={a: dict(o) for a, o in spec_mod.ATTACK_OPTIONS.items()},
        settings=spec_mod.PRESETS["smoke"],
        preset="smoke",
    )
    points = spec_mod.build_defense_points(smoke)
    assert len(points) == len(smoke.defenses) * len(smoke.attacks)
    targets = {p.attack_name: p.params["targets"] for p in points}
    assert targets["deepfool"] == "untargeted" and targets["jsma"] == "random"
    untargeted = spec_mod.DefenseSpec(sweep="defenses", targets="untargeted")
    with pytest.raises(SweepError, match="'jsma' is targeted only"):
        spec_mod.build_defense_points(untargeted)
    bad = spec_mod.DefenseSpec(
        sweep="defenses", settings=spec_mod.DefenseSettings(extra={"vae_fpr": 2.0})
    )
    with pytest.raises(SweepError, match="defense vae: fpr must lie in"):
        spec_mod.build_defense_points(bad)


def _trial(defense: str, attack: str, targets: str, rate: float, **more: float) -> dict[str, Any]:
    targeted = targets != "untargeted"
    row: dict[str, Any] = {
        "model": "B",
        "defense": defense,
        "attack": attack,
        "targets": targets,
        "attacks": 10,
        "test_accuracy": 0.98,
        "untargeted_success_rate": rate,
        "untargeted_success_ci_low": rate / 2,
        "untargeted_success_ci_high": 1.0,
        "targeted_success_rate": rate if targeted else math.nan,
        "targeted_success_ci_low": rate / 2 if targeted else math.nan,
        "targeted_success_ci_high": 1.0 if targeted else math.nan,
        "n_images": 10,
        "eval_images": "all",
    }
    return {**row, **more}


def test_defense_table_counts_untargeted_columns_and_shows_the_detector() -> None:
    det = {
        "detection_rate": 0.97,
        "adaptive_success_rate": 0.88,
        "adaptive_success_ci_low": 0.8,
        "adaptive_success_ci_high": 0.93,
        "roc_auc": 0.991,
    }
    df = pd.DataFrame(
        [
            _trial("none", "stadv", "random", 0.9),
            _trial("none", "deepfool", "untargeted", 0.6),
            _trial("vae", "stadv", "random", 0.9, **det),
            _trial(
                "vae", "deepfool", "untargeted", 0.6, **{**det, "adaptive_success_rate": math.nan}
            ),
            _trial("pcl", "stadv", "random", 0.5),
        ]
    )
    table = defense_table.success_table(df)
    deepfool = table[table["attack"] == "deepfool"]
    assert (deepfool["success_kind"] == "untargeted").all() and (deepfool["success"] == 0.6).all()
    wide = defense_table.wide_table(table).set_index("defense")
    assert "DeepFool (untargeted)" in wide.columns and "stAdv" in wide.columns
    assert wide.loc["VAE detector", "stAdv"] == (
        "detect 97.0% / adaptive 88.0% [80.0%, 93.0%] / AUC 0.991"
    )
    assert wide.loc["VAE detector", "DeepFool (untargeted)"].startswith(
        "detect 97.0% / adaptive n/a"
    )
    assert wide.loc["undefended", "DeepFool (untargeted)"] == "60.0% [30.0%, 100.0%]"
    assert wide.loc["PCL", "stAdv"] == "50.0% [25.0%, 100.0%]"
    text = defense_table.summary_text(df)
    assert defense_table.DETECTOR_NOTE in text and defense_table.UNTARGETED_NOTE in text
    metrics = defense_table.metrics(table)
    assert metrics["detection.stadv.vae.B"] == 0.97 and metrics["roc_auc.stadv.vae.B"] == 0.991
    assert "adaptive_success.deepfool.vae.B" not in metrics
    assert metrics["success.deepfool.none.B"] == 0.6
    shown = defense_table.figures(table)
    assert set(shown) == {"success_stadv.png", "success_deepfool.png"}
    ax = shown["success_stadv.png"].axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows == ["undefended", "PCL", "VAE detector (adaptive)"]
    values = ax.images[0].get_array()
    assert [float(v) for v in values[:, 0]] == pytest.approx([0.9, 0.5, 0.88])  # adaptive


def test_defended_models_bundle_the_new_defenses(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep's models for distillation, PCL-PGD and the VAE detector under the smoke preset
    (trained into a temporary store), and a detector trial's further metrics, without Ray."""
    monkeypatch.setenv("STADV_STORE", str(tmp_path / "unused"))
    spec = spec_mod.DefenseSpec(
        sweep="defenses",
        models=("B",),
        defenses=("distillation", "pcl-pgd", "vae"),
        attacks=("stadv",),
        settings=spec_mod.PRESETS["smoke"],
        preset="smoke",
        eval_images=200,
        smoke=True,
    )
    store = tmp_path / "store"
    bundles = DefendedModels(spec, str(store), str(data_root)).all()
    assert set(bundles) == {"B/distillation", "B/pcl-pgd", "B/vae"}
    assert bundles["B/distillation"]["info"]["params"]["defense_variant"] == "distilled-smoke"
    assert (store / "mnist-B-distill-teacher-smoke.pt").is_file()
    assert bundles["B/pcl-pgd"]["info"]["params"]["defense_variant"] == "pcl-pgd-smoke"
    vae = bundles["B/vae"]
    assert vae["pre"] is None and isinstance(vae["report"], DetectorMetrics)
    assert vae["info"]["params"]["detector_validation_images"] == 200
    assert (store / "mnist-vae-smoke.pt").is_file()
    assert all(b["report"] is None for k, b in bundles.items() if k != "B/vae")
    # reloading checks every stored part against the settings, and trains nothing again
    stamps = {p.name: p.stat().st_mtime_ns for p in store.iterdir()}
    DefendedModels(spec, str(store), str(data_root)).all()
    assert {p.name: p.stat().st_mtime_ns for p in store.iterdir()} == stamps
    assert not os.path.exists(tmp_path / "unused")
