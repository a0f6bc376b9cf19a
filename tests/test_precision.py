"""The attacks' float32 precision policy (stadv.precision): flags set inside and restored
after, bad values named, every attack honours it, and success judged under it agrees with
strict fp32."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from stadv.attack import StAdv
from stadv.data import TensorData
from stadv.fgsm import FGSM
from stadv.models import predict
from stadv.options import options
from stadv.precision import BF16_LOGIT_ERROR, PRECISIONS, float32_logits, precision_policy
from stadv.registry import ATTACKS
from stadv_cli.attack import attack_from_args
from stadv_cli.main import build_parser

Flags = tuple[str, str, str]


def flags() -> Flags:
    """(cuBLAS matmul, cuDNN convolution) fp32 precision and the float32 matmul precision."""
    return (
        torch.backends.cuda.matmul.fp32_precision,
        torch.backends.cudnn.conv.fp32_precision,
        torch.get_float32_matmul_precision(),
    )


@pytest.fixture()
def unusual_flags() -> Iterator[Flags]:
    """A caller's state that neither policy sets, through the older interface (matmul
    precision "medium", cuDNN TF32 off), restored after the test whatever it did."""
    saved = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    torch.set_float32_matmul_precision("medium")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield flags()
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved


def test_policy_sets_the_flags_inside_and_restores_them_after(
    unusual_flags: Flags,
) -> None:
    assert unusual_flags[2] == "medium"
    with precision_policy("tf32"):
        assert flags()[:2] == ("tf32", "tf32")
    assert flags() == unusual_flags
    with precision_policy("fp32"):
        assert flags()[:2] == ("ieee", "ieee")
        with precision_policy("tf32"):  # nested: the inner block restores the outer's
            assert flags()[:2] == ("tf32", "tf32")
        assert flags()[:2] == ("ieee", "ieee")
    assert flags() == unusual_flags
    # what the older interface reads back inside: PyTorch's own view of the same settings
    with precision_policy("fp32"):
        assert not torch.backends.cudnn.allow_tf32


def test_policy_restores_the_flags_when_the_block_raises(
    unusual_flags: Flags,
) -> None:
    with pytest.raises(RuntimeError, match="boom"), precision_policy("tf32"):
        raise RuntimeError("boom")
    assert flags() == unusual_flags


def test_a_bad_policy_is_named_and_changes_nothing(unusual_flags: Flags) -> None:
    with pytest.raises(
        ValueError, match="unknown precision 'fp16'; allowed: 'fp32', 'tf32', 'bf16'"
    ):
        with precision_policy("fp16"):
            pytest.fail("the block must not run")
    assert flags() == unusual_flags
    for cls in ATTACKS.values():
        with pytest.raises(ValueError, match="unknown precision 'fp16'"):
            cls(precision="fp16")
    with pytest.raises(ValueError, match="precision='bf16' is not used by few-pixel"):
        ATTACKS["few-pixel"](precision="bf16")


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_has_the_option_strict_by_default(name: str) -> None:
    opt = options(ATTACKS[name])["precision"]
    assert opt.kind == "choice" and opt.choices == PRECISIONS and opt.default == "fp32"
    assert ATTACKS[name]().precision == "fp32"


def test_the_cli_flag_builds_the_attack_and_names_a_bad_value() -> None:
    parser = build_parser()
    args = parser.parse_args(["attack", "--attack", "pgd", "--precision", "tf32"])
    assert attack_from_args(args).precision == "tf32"
    args = parser.parse_args(["attack", "--precision", "fp64"])
    with pytest.raises(ValueError, match="fp64"):
        attack_from_args(args)


class FlagRecorder(nn.Module):
    """A linear logits model that records, per forward pass, whether gradients were on and
    the two TF32 flags (or raises, when asked to)."""

    def __init__(self, *, fail: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(28 * 28, 10)
        self.fail = fail
        self.seen: list[tuple[bool, str, str]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail:
            raise RuntimeError("model failed")
        self.seen.append(
            (
                torch.is_grad_enabled(),
                torch.backends.cuda.matmul.fp32_precision,
                torch.backends.cudnn.conv.fp32_precision,
            )
        )
        out: torch.Tensor = self.linear(x.flatten(1))
        return out


def test_the_search_runs_under_the_policy_and_the_verdict_in_fp32(
    unusual_flags: Flags,
) -> None:
    model = FlagRecorder()
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 2])
    result = FGSM(epsilon=0.1, precision="tf32", check=False)(model, x, y)
    searched = [s for s in model.seen if s[0]]
    judged = [s for s in model.seen if not s[0]]
    assert searched and all(s[1:] == ("tf32", "tf32") for s in searched)
    assert judged and all(s[1:] == ("ieee", "ieee") for s in judged)
    assert result.extra["params"]["precision"] == "tf32"  # recorded with the result
    assert flags() == unusual_flags


def test_an_attack_that_raises_restores_the_flags(unusual_flags: Flags) -> None:
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
    with pytest.raises(RuntimeError, match="model failed"):
        StAdv(precision="tf32", check=False, max_iterations=3)(FlagRecorder(fail=True), x, y)
    assert flags() == unusual_flags


def test_on_a_cpu_both_policies_give_identical_results(
    tiny_model_b: nn.Module, mnist_test: TensorData
) -> None:
    x, y = mnist_test.images[:3], mnist_test.labels[:3]
    fast = dict(max_iterations=15, restarts=0)
    strict = StAdv(**fast)(tiny_model_b, x, y, targets="random")  # type: ignore[arg-type]
    loose = StAdv(precision="tf32", **fast)(tiny_model_b, x, y, targets="random")  # type: ignore[arg-type]
    assert torch.equal(strict.adv_images, loose.adv_images)
    assert torch.equal(strict.success, loose.success)
    assert torch.equal(strict.evaluations, loose.evaluations)
    assert strict.extra["params"]["precision"] == "fp32"
    assert loose.extra["params"]["precision"] == "tf32"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (TF32 is a GPU setting)")
def test_cuda_tf32_success_agrees_with_the_strict_fp32_prediction(
    tiny_model_b: nn.Module, mnist_test: TensorData
) -> None:
    model = copy.deepcopy(tiny_model_b).to("cuda")
    x, y = mnist_test.images[:16].cuda(), mnist_test.labels[:16].cuda()
    fast = dict(max_iterations=40, eq5_scale="sqrt_n")  # tests/test_attack.py's quick attack
    for precision in PRECISIONS:
        result = StAdv(precision=precision, **fast)(model, x, y, targets="all")  # type: ignore[arg-type]
        with precision_policy("fp32"):  # the default policy: strict fp32
            pred = predict(model, result.adv_images)
        assert result.adv_images.is_cuda
        assert torch.equal(result.predictions, pred), precision
        assert torch.equal(result.success, pred == result.targets), precision
        assert float(result.success.float().mean()) > 0.5, precision


def test_blocks_saved_before_the_option_still_resume() -> None:
    import argparse

    from stadv_cli.attack import _block_key

    args = argparse.Namespace(attack="stadv", dataset="mnist", targets="all")
    assert "precision" not in _block_key(args, StAdv(), "B", "digest")["params"]
    assert _block_key(args, StAdv(precision="tf32"), "B", "digest")["params"]["precision"] == "tf32"


def test_bf16_autocasts_inside_and_a_strict_block_inside_it_is_strict() -> None:
    assert not torch.is_autocast_enabled("cpu")
    lin = nn.Linear(4, 3)
    x = torch.rand(2, 4)
    with precision_policy("bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert lin(x).dtype == torch.bfloat16
        assert float32_logits(lin, "bf16")(x).dtype == torch.float32
        with precision_policy("fp32"):
            assert not torch.is_autocast_enabled("cpu")
            assert lin(x).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")
    assert float32_logits(lin, "fp32") is lin


class AutocastRecorder(nn.Module):
    """A linear logits model that records, per forward pass, whether gradients and CPU
    autocast were on; with ``lie_under_bf16`` its logits under autocast say class 0 by a wide
    margin (what no fp32 evaluation confirms)."""

    def __init__(self, *, lie_under_bf16: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(28 * 28, 10)
        self.lie = lie_under_bf16
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        autocast = torch.is_autocast_enabled("cpu")
        self.seen.append((torch.is_grad_enabled(), autocast))
        out: torch.Tensor = self.linear(x.flatten(1))
        if self.lie and autocast:
            out = out + 100.0 * nn.functional.one_hot(torch.zeros_like(out[:, 0]).long(), 10)
        return out


@pytest.mark.parametrize("name", ["fgsm", "pgd", "stadv", "deepfool"])
def test_bf16_searches_in_autocast_and_judges_in_fp32(name: str) -> None:
    model = AutocastRecorder()
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 2])
    extra = {"max_iterations": 3} if name in ("stadv", "deepfool") else {}
    result = ATTACKS[name](precision="bf16", check=False, **extra)(model, x, y)
    searched = [s for s in model.seen if s[0]]
    judged = [s for s in model.seen if not s[0]]
    assert searched and all(s[1] for s in searched)
    assert judged and not any(s[1] for s in judged)
    assert result.adv_images.dtype == torch.float32
    with precision_policy("fp32"):
        pred = predict(model, result.adv_images)
    assert torch.equal(result.predictions, pred)
    assert not torch.is_autocast_enabled("cpu")


def test_stadv_bf16_restarts_an_attack_its_fp32_check_rejects() -> None:
    """Under autocast the model claims class 0, the target, for every image; in fp32 it does
    not: the bf16 search accepts at once, the fp32 check rejects, each restart solves it again, and the
    reported failure agrees with the fp32 prediction."""
    model = AutocastRecorder(lie_under_bf16=True)
    torch.manual_seed(1)
    pool = torch.rand(20, 1, 28, 28)
    with torch.no_grad():
        pool_pred = model(pool).argmax(dim=1)
    x = pool[pool_pred != 0][:2]  # fp32 says another class than the lie's
    y = pool_pred[pool_pred != 0][:2]
    assert x.shape[0] == 2
    targets = torch.zeros(2, dtype=torch.int64)  # the class autocast claims
    attack = StAdv(precision="bf16", check=False, max_iterations=5, restarts=2)
    result = attack(model, x, y, targets=targets)
    assert result.extra["restarted"] == [2, 2]
    with precision_policy("fp32"):
        pred = predict(model, result.adv_images)
    assert torch.equal(result.success, pred == targets)
    assert attack.acceptance_margin == pytest.approx(1e-3 + BF16_LOGIT_ERROR)
    assert StAdv().acceptance_margin == pytest.approx(1e-3)


def test_stadv_bf16_success_agrees_with_fp32_and_matches_the_fp32_attack(
    tiny_model_b: nn.Module, mnist_test: TensorData
) -> None:
    x, y = mnist_test.images[:4], mnist_test.labels[:4]
    fast = dict(max_iterations=60, eq5_scale="sqrt_n")
    strict = StAdv(**fast)(tiny_model_b, x, y, targets="random")  # type: ignore[arg-type]
    low = StAdv(precision="bf16", **fast)(tiny_model_b, x, y, targets="random")  # type: ignore[arg-type]
    with precision_policy("fp32"):
        pred = predict(tiny_model_b, low.adv_images)
    assert torch.equal(low.success, pred == low.targets)
    assert torch.equal(low.targets, strict.targets)  # targets drawn in fp32 either way
    assert bool(strict.success.all()) and bool(low.success.all())
