"""stAdv: spatially transformed adversarial examples (Xiao et al., ICLR 2018, arXiv 1801.02612).

The attack moves pixels instead of changing their values. For each (image x, target t) it
optimises a flow field f (2, H, W), resamples x bilinearly at ``p + f(p)`` (:func:`stadv.flow.warp`)
and minimises, per attack and independently of the rest of the batch::

    L(f) = L_adv(x, f) + tau * L_flow(f)
    L_adv = max(max_{i != t} Z(x_f)_i - Z(x_f)_t, -kappa)          (targeted, on logits Z)
    L_adv = max(Z(x_f)_y - max_{i != y} Z(x_f)_i, -kappa)          (untargeted, true class y)

with L_flow the flow's total variation (:func:`stadv.flow.flow_loss`) and L-BFGS (the paper's
solver).

Default flow loss: paper Eq. 5's reading, ``sqrt(sum_p sum_{q in N(p)} ||f_p - f_q||^2 + eps)``
(one square root over the whole field, no 1/n factor), not Eq. 4's per-pixel roots: with Eq. 4
the term tau * L_flow dominates and most attacks stop short of the target; ``flow_loss="eq4"``
is one option away. The paper leaves the solver's iteration limit, tolerances, history,
initialisation and border handling open: each is a named option here.

Default line search: the weak Wolfe conditions (``wolfe``). SciPy's strong Wolfe search cannot
be satisfied at the hinge's kink on the decision boundary and L-BFGS stalls there; the weak
conditions (Lewis & Overton's BFGS for non-smooth functions) let it go on to a lower L_flow
at more evaluations.

Default restarts: an attack that found no successful iterate is solved up to three more times,
each from a Gaussian flow of std 0.1 (``restarts``, ``restart_scale``; zero is a stationary
point of L_flow). Only failures are re-solved, so the successes cost nothing more.

Default searched hinge: a softplus smoothing of L_adv's hinge (``hinge="softplus"``, width
0.2 logits, shifted 0.1 logits into the success region). With kappa = 0 the minimiser of the
paper's objective lies on the hinge's kink, the decision boundary, and L-BFGS's line search
needs ~3 evaluations per iteration there (step 1 fails on 65 % of the iterations); on the
smoothed hinge it needs ~1.4 and reaches a lower L_flow. What is searched is the only change:
each evaluated iterate is still accepted by the exact test (``success_margin``) and the one kept
(``keep="best"``) is the successful iterate of least L_flow, so the result is judged on the
paper's objective. ``hinge="exact"`` searches the paper's hinge itself.

Default schedule: each attack stops 50 accepted iterations after its first successful iterate
(``stop="first-success"``, ``polish``). With the smoothed hinge this reaches a lower mean
L_flow than L-BFGS run to convergence on the exact hinge, at about a sixth of its evaluations
(``benchmarks/frontier.py``; docs/performance.md). ``stop="converged"`` minimises to the
solver's stopping rule; ``StAdv(hinge="exact", stop="converged")`` is the earlier converged
attack.

Measured success rates, L_flow, iterations and timings of these choices (and the paper's
numbers beside them) are in ``docs/reproduction.md``.

Example::

    >>> attack = StAdv(tau=0.05, kappa=0.0)
    >>> result = attack(model, images, labels, targets="all")   # 9 attacks per image
    >>> result.success.float().mean()                            # targeted success rate
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import nn

from stadv.attack_base import AttackBatch, attack_batch
from stadv.flow import (
    EQ5_SCALES,
    FLOW_LOSS_VARIANTS,
    NEIGHBOURS,
    PADDINGS,
    UNITS,
    Eq5Scale,
    FlowLossVariant,
    Neighbours,
    Padding,
    Units,
    flow_loss_unchecked,
    warp_unchecked,
)
from stadv.margin import margin_loss
from stadv.options import check_choice, check_int, check_real
from stadv.precision import (
    BF16_LOGIT_ERROR,
    PRECISIONS,
    Precision,
    precision_policy_unchecked,
)
from stadv.result import AttackResult
from stadv.solvers.base import SolverResult
from stadv.targets import TargetSpec

Init = Literal["zeros", "gaussian", "uniform"]
Solver = Literal["lbfgs", "scipy", "scipy-loop", "adam"]
Keep = Literal["best", "last"]
Stop = Literal["converged", "first-success"]
Wolfe = Literal["strong", "weak"]
LossInput = Literal["logits", "softmax"]
Batching = Literal["continuous", "chunks"]
Hinge = Literal["softplus", "exact"]

#: The Literal options of :class:`StAdv` and their allowed values.
CHOICES: dict[str, tuple[str, ...]] = {
    "init": get_args(Init),
    "solver": get_args(Solver),
    "keep": get_args(Keep),
    "stop": get_args(Stop),
    "wolfe": get_args(Wolfe),
    "flow_loss": FLOW_LOSS_VARIANTS,
    "neighbours": NEIGHBOURS,
    "eq5_scale": EQ5_SCALES,
    "units": UNITS,
    "padding": PADDINGS,
    "loss_input": get_args(LossInput),
    "precision": PRECISIONS,
    "batching": get_args(Batching),
    "hinge": get_args(Hinge),
}

#: Default ``init_scale`` per initialisation: Gaussian std (the public reproduction's fix) and
#: the upper end of the uniform draw (the TensorFlow demo draws flows from U[0, 1)).
DEFAULT_INIT_SCALE: dict[str, float] = {"zeros": 0.0, "gaussian": 0.01, "uniform": 1.0}

#: Accepted iterations after the first success of the default schedule (``polish=None``): on
#: the smoothed hinge, the cheapest point of the frontier (``benchmarks/frontier.py``) whose
#: mean L_flow is at or below that of the converged attack on the exact hinge.
DEFAULT_POLISH = 50

#: Options each solver ignores (a non-default value of one is a ``ValueError``).
SOLVER_IGNORES: dict[str, tuple[str, ...]] = {
    "lbfgs": ("lr",),
    "scipy": ("lr",),
    "scipy-loop": ("lr",),
    "adam": ("pgtol", "factr", "history", "max_linesearch", "wolfe"),
}


@dataclass(frozen=True, kw_only=True)
class StAdv:
    """The stAdv attack's hyper-parameters (model, images and targets come at call time).

    Args (all keyword-only; defaults in brackets):
        tau: weight of L_flow [0.05, the paper's]. >= 0.
        kappa: confidence margin of L_adv [0.0, the paper's]. >= 0: the hinge stops pushing
            once the target leads by kappa (``max(..., -kappa)``; a negative kappa would make
            the attack stop before it succeeds).
        init: initial flow, ``"zeros"`` [default], ``"gaussian"`` (std ``init_scale``) or
            ``"uniform"`` (U[0, init_scale)), drawn per attack from a generator seeded by
            (``seed``, the image, the target): the same draw in any batch or order.
        init_scale: scale of the random initialisation [None: 0.01 for gaussian, 1.0 for
            uniform]. Must stay None with ``init="zeros"``, which has no scale.
        solver: ``"lbfgs"`` [default; torch-native batched L-BFGS, per-sample state,
            Moré-Thuente line search (weak Wolfe by default, see ``wolfe``), SciPy's stopping
            rules], ``"scipy"`` (SciPy's L-BFGS-B per sample, evaluations batched across
            samples), ``"scipy-loop"`` (SciPy, one image at a time: the slow baseline) or
            ``"adam"`` (first order, ``lr``; ``max_iterations`` steps).
        max_iterations: solver iteration limit [1000]. 0 returns the initial flow.
        pgtol: stop when max |gradient| <= pgtol [1e-5, SciPy's default]. L-BFGS solvers only.
        factr: stop when the relative decrease of L <= factr * machine eps [1e7, SciPy's].
            L-BFGS solvers only.
        history: L-BFGS memory (SciPy's ``m``) [10]. L-BFGS solvers only.
        max_linesearch: line-search evaluations per iteration [20, SciPy's ``maxls``]. L-BFGS
            solvers only.
        wolfe: the line search's curvature condition, ``"weak"`` (``slope >= 0.9 * initial
            slope``: BFGS for non-smooth functions, Lewis & Overton 2013) or ``"strong"``
            (``|slope| <= 0.9 |initial slope|``, SciPy's L-BFGS-B) [None: ``"weak"`` for the
            ``lbfgs`` solver, ``"strong"`` for the ``scipy`` solvers, which only have that].
            The hinge in L_adv puts a kink on the decision boundary, where the strong condition
            can be unsatisfiable: the searches end on ``xtol`` at short steps and L-BFGS
            stalls (:mod:`stadv.solvers.lbfgs`); the weak condition reaches a lower minimum of
            the paper's objective at more evaluations. Not for ``solver="adam"``.
        lr: Adam's step size [0.01]. > 0. ``solver="adam"`` only.
        keep: ``"best"`` [default]: return the successful iterate (over every evaluated point)
            with the lowest L_flow, as Carlini & Wagner do; ``"last"``: the solver's final
            iterate (what the failed reproductions returned). Where no iterate succeeded, both
            return the final iterate.
        success_margin: the acceptance test's hysteresis [1e-3]: an evaluated iterate is
            accepted (for ``keep="best"`` and ``stop="first-success"``) only when its logit
            margin ``max_{i!=t} Z_i - Z_t`` (untargeted: ``Z_y - max_{i!=y} Z_i``) is
            <= -success_margin. The returned image is then reported a success exactly when the
            model predicts the target (untargeted: not the label) on it, in the result's own
            forward pass, so the success mask always agrees with the prediction. Why two
            thresholds: with kappa = 0 the solver ends on the decision boundary, and the
            logits of one image move by ~1e-6 between batch sizes and chunkings; an iterate
            accepted 1e-3 inside the boundary is still inside it when re-judged in any batch,
            so success does not depend on the batch. 0 accepts on the bare argmax test (ties
            included, as Carlini & Wagner's ``compare``), which such noise can flip. kappa
            still shapes the loss; this is only the acceptance test. >= 0.
        stop: ``"first-success"`` [default]: stop each attack ``polish`` accepted iterations
            after its first successful iterate (the solver's own stopping rule may end it
            earlier); ``"converged"``: run the solver to its stopping rule (minimises the
            searched objective to the end; ``StAdv(hinge="exact", stop="converged")`` is the
            converged attack on the paper's own hinge). Why the default polishes: it only cuts
            attacks that have already succeeded, so it keeps their successes; on the smoothed
            hinge 50 accepted iterations reach a lower mean L_flow than the exact hinge run
            to convergence at about a sixth of its evaluations (issue 21's quality-cost
            frontier, ``benchmarks/frontier.py``; the measured Table 1 of both is in
            docs/performance.md).
        polish: with ``stop="first-success"``, the accepted L-BFGS iterations each attack runs
            after its first successful iterate before it stops [None: 50
            (:data:`DEFAULT_POLISH`); 0: stop at the first success, least work, largest
            L_flow]; ``keep="best"`` returns the successful iterate of least L_flow seen.
            >= 0; None or 0 with ``stop="converged"`` (nothing to polish: it runs on).
        restarts: how many times an attack with no successful iterate is solved again from a
            random initial flow [3]; 0 solves each attack once. Restart ``k`` draws a Gaussian
            flow with std ``restart_scale`` from a generator seeded by (``seed``, ``k``, the
            image, the target), so a batch still equals its attacks run alone. Only failed
            attacks are re-solved, so the cost is the failures' share; iterations and
            evaluations add up over the runs, the stop reason is the last run's. Why: zero is
            a stationary point of L_flow and an unlucky start; random restarts are the field's
            usual remedy (Madry et al.'s PGD, AutoAttack). Three at std 0.1 left no failure
            where one at std 0.01 left one on C (images 1000-1499) and two on B (images
            0-999; one remains): docs/performance.md. Must stay at its default with
            ``max_iterations=0`` (nothing is solved, so nothing is restarted).
        restart_scale: std of the first restart's Gaussian initial flow, in ``units`` [0.1]. >= 0.
            Must stay at its default when no restart can run (``restarts=0`` or
            ``max_iterations=0``).
        restart_growth: restart ``k`` draws its flow with std
            ``restart_scale * restart_growth ** (k - 1)`` [1.0: every restart at
            ``restart_scale``]. >= 1. Why: an attack that fails from zero and from small random
            flows may need a larger start (B's one failure over test images 0-999 at the
            default, image 526 towards 6, is solved at std 0.2). Must stay at its default when
            no restart can run.
        flow_loss: ``"eq5"`` [default] or ``"eq4"``; ``neighbours`` ``"4"`` [default],
            ``"diagonal"`` or ``"8"``; ``eq5_scale`` ``"none"`` [default], ``"n"``, ``"sqrt_n"``
            (``"none"`` with ``"eq4"``); ``flow_eps`` the epsilon under the square roots
            [1e-8]. See :func:`stadv.flow.flow_loss`.
        units: flow units, ``"pixels"`` [default, the paper's] or ``"grid"`` ([-1, 1] coordinates).
        padding: warp border handling, ``"border"`` [default, the TensorFlow reference] or ``"zeros"``.
        loss_input: ``"logits"`` [default, the paper's Z] or ``"softmax"`` (probabilities: what a
            failed reproduction fed the loss; for ablations only).
        num_classes: classes of the model [10].
        seed: seeds the initialisation and the ``"random"`` target protocol [0].
        batch_size: attacks solved together [256]; results do not depend on it.
        batching: how attacks share the batch, ``"continuous"`` or ``"chunks"`` [None: continuous
            with ``solver="lbfgs"``, the only solver that has it; chunks otherwise].
            ``"chunks"`` solves ``batch_size`` attacks at a time, each chunk to its last attack,
            so a chunk's tail runs at a small batch; ``"continuous"`` keeps ``batch_size`` attacks
            in flight and a new attack joins as soon as one finishes (its first evaluation rides
            in the same model call), so only the last ``batch_size`` attacks form a tail
            (``lbfgs_minimize(max_active=)``). Results do not depend on it.
        device: where to run [None: the images' device]. Set by the runtime, not an option of
            the schema (:mod:`stadv.options`).
        check: run the sanity checks (probabilities, zero gradients) and warn [True].
        precision: the policy of the attack's model evaluations, ``"fp32"`` [default,
            strict], ``"tf32"`` (TF32 convolutions and matmuls on Ampere+ GPUs) or ``"bf16"``
            (bfloat16 autocast: about half the CPU time of a model evaluation; the search
            then accepts an iterate only :data:`~stadv.precision.BF16_LOGIT_ERROR` logits
            beyond ``success_margin``, and each run's kept iterates are checked in fp32, a
            failed check counting as a failure that ``restarts`` solve again); the verdict on
            the returned images is strict fp32 in every case (:mod:`stadv.precision`).
        hinge: the L_adv the solver searches, ``"softplus"`` [default] or ``"exact"`` (the
            paper's ``max(margin, -kappa)``). ``"softplus"`` searches
            ``-kappa + w * softplus((margin + kappa + s) / w)``, the hinge with its kink rounded
            over a width ``w`` and moved ``s`` logits into the success region, so that the
            smooth minimiser lies inside it. Acceptance (``success_margin``), the kept iterate
            (``keep``) and the verdict are the exact ones either way: only the path of the
            search changes. Why: with kappa = 0 the paper's minimiser lies on the kink, where
            L-BFGS's line search fails its first step on most iterations (the module
            docstring has the counts); the smoothed search needs about half the evaluations
            per iteration and ends at a lower L_flow.
        hinge_width: ``w``, the softplus's width in logits [0.2]. > 0. ``hinge="softplus"`` only.
        hinge_shift: ``s``, how far into the success region the smoothed hinge is moved, in
            logits [0.1]. >= 0. ``hinge="softplus"`` only.

    Every option is validated once, at construction (``ValueError`` naming the option, the
    value and the allowed values); an option the chosen solver or setting ignores, given a
    non-default value, is a ``ValueError`` too (see :data:`SOLVER_IGNORES`), never silently
    dropped.

    Call: ``attack(model, images, labels, targets=None) -> AttackResult``: ``images``
    (N, C, H, W) in [0, 1], ``labels`` (N,), ``targets`` as in :mod:`stadv.targets`; the result
    (M rows, one per attack) carries ``flows`` (M, 2, H, W) and ``flow_loss`` (M,).
    """

    name: ClassVar[str] = "stadv"
    label: ClassVar[str] = "stAdv"

    tau: float = 0.05
    kappa: float = 0.0
    init: Init = "zeros"
    init_scale: float | None = None
    solver: Solver = "lbfgs"
    max_iterations: int = 1000
    pgtol: float = 1e-5
    factr: float = 1e7
    history: int = 10
    max_linesearch: int = 20
    wolfe: Wolfe | None = None
    lr: float = 0.01
    keep: Keep = "best"
    success_margin: float = 1e-3
    stop: Stop = "first-success"
    polish: int | None = None
    restarts: int = 3
    restart_scale: float = 0.1
    restart_growth: float = 1.0
    flow_loss: FlowLossVariant = "eq5"
    neighbours: Neighbours = "4"
    eq5_scale: Eq5Scale = "none"
    flow_eps: float = 1e-8
    units: Units = "pixels"
    padding: Padding = "border"
    loss_input: LossInput = "logits"
    num_classes: int = 10
    seed: int = 0
    batch_size: int = 256
    device: str | None = field(default=None, metadata={"option": False})
    check: bool = True
    precision: Precision = "fp32"
    batching: Batching | None = None
    hinge: Hinge = "softplus"
    hinge_width: float = 0.2
    hinge_shift: float = 0.1

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            if name in ("wolfe", "batching") and getattr(self, name) is None:
                continue
            object.__setattr__(self, name, check_choice(name, getattr(self, name), allowed))
        for name in (
            "tau",
            "kappa",
            "success_margin",
            "pgtol",
            "factr",
            "flow_eps",
            "lr",
            "restart_scale",
        ):
            value = getattr(self, name)
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not value >= 0
                or value == float("inf")
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr == 0:
            raise ValueError("lr must be > 0, got 0")
        if self.init_scale is not None:
            check_real("init_scale", self.init_scale)
        check_real("restart_growth", self.restart_growth, low=1.0)
        check_real("hinge_width", self.hinge_width, strict=True)
        check_real("hinge_shift", self.hinge_shift)
        for name, low in (
            ("max_iterations", 0),
            ("restarts", 0),
            ("history", 1),
            ("max_linesearch", 1),
            ("batch_size", 1),
            ("num_classes", 2),
            ("seed", 0),
        ):
            check_int(name, getattr(self, name), low=low)
        if self.polish is not None:
            check_int("polish", self.polish, low=0)
        if self.wolfe == "weak" and self.solver in ("scipy", "scipy-loop"):
            raise ValueError(
                f"wolfe='weak' needs solver='lbfgs' (SciPy's search is strong), got {self.solver!r}"
            )
        if self.batching == "continuous" and self.solver != "lbfgs":
            raise ValueError(
                f"batching='continuous' needs solver='lbfgs', got {self.solver!r} "
                "(leave batching at None or 'chunks')"
            )
        if self.flow_loss == "eq4" and self.eq5_scale != "none":
            raise ValueError(f"eq5_scale={self.eq5_scale!r} only applies to flow_loss='eq5'")
        self._refuse_ignored()

    def _refuse_ignored(self) -> None:
        """``ValueError`` for an option that this configuration ignores but was changed."""
        defaults = {f.name: f.default for f in fields(self)}

        def refuse(name: str, why: str) -> None:
            if getattr(self, name) != defaults[name]:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is ignored by {why}: leave it at its "
                    f"default {defaults[name]!r}"
                )

        for name in SOLVER_IGNORES[self.solver]:
            refuse(name, f"solver={self.solver!r}")
        if self.init == "zeros":
            refuse("init_scale", "init='zeros'")
        if self.max_iterations == 0:
            refuse("restarts", "max_iterations=0 (nothing is solved, so nothing is restarted)")
            refuse("restart_scale", "max_iterations=0 (no restart runs)")
            refuse("restart_growth", "max_iterations=0 (no restart runs)")
        if self.restarts == 0:
            refuse("restart_scale", "restarts=0 (no restart runs)")
            refuse("restart_growth", "restarts=0 (no restart runs)")
        if self.stop == "converged" and self.polish not in (None, 0):
            refuse("polish", "stop='converged' (the solver runs to its stopping rule)")
        if self.hinge == "exact":
            refuse("hinge_width", "hinge='exact' (no smoothing)")
            refuse("hinge_shift", "hinge='exact' (no smoothing)")

    # -- introspection -------------------------------------------------------------------
    @classmethod
    def options(cls) -> dict[str, tuple[str, ...]]:
        """Option name -> allowed values, for the Literal options (sweeps, CLIs)."""
        return dict(CHOICES)

    @classmethod
    def parameter_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def effective_wolfe(self) -> Wolfe:
        """The curvature condition the solver uses (``wolfe``, or the solver's default)."""
        if self.wolfe is not None:
            return self.wolfe
        return "weak" if self.solver == "lbfgs" else "strong"

    @property
    def effective_batching(self) -> Batching:
        """How attacks share the batch (``batching``, or the solver's default)."""
        if self.batching is not None:
            return self.batching
        return "continuous" if self.solver == "lbfgs" else "chunks"

    @property
    def effective_polish(self) -> int:
        """Accepted iterations run after the first success (``polish``, or the default
        :data:`DEFAULT_POLISH` with ``stop="first-success"``; 0 with ``stop="converged"``)."""
        if self.stop == "converged":
            return 0
        return DEFAULT_POLISH if self.polish is None else self.polish

    @property
    def effective_init_scale(self) -> float:
        return DEFAULT_INIT_SCALE[self.init] if self.init_scale is None else float(self.init_scale)

    # -- the attack ------------------------------------------------------------------------
    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        targets: TargetSpec = None,
    ) -> AttackResult:
        """Attack ``images`` (N, C, H, W) in [0, 1] with true ``labels`` (N,).

        ``targets``: None (untargeted), a tensor (N,) of target classes, ``"all"`` (every other
        class: 9N attacks, image-major), ``"random"`` or ``"least-likely"``.
        Returns an :class:`~stadv.result.AttackResult` with ``flows`` and ``flow_loss``.
        """
        device = None if self.device is None else torch.device(self.device)
        with attack_batch(self, model, images, labels, targets, device=device) as batch:
            return self._attack(batch)

    def _attack(self, batch: AttackBatch) -> AttackResult:
        """Solve every attack of the prepared ``batch`` in chunks of ``batch_size``."""
        net, xs, ys, ts = batch.net, batch.images, batch.labels, batch.targets
        device = xs.device
        flows: list[torch.Tensor] = []
        solved: list[SolverResult] = []
        restarted = [0] * self.restarts
        # continuous batching: one solver run over all attacks, batch_size of them in flight
        step = xs.shape[0] if self.effective_batching == "continuous" else self.batch_size
        for lo in range(0, xs.shape[0], max(step, 1)):
            hi = min(lo + step, xs.shape[0])
            flow, res, reruns = self._attack_chunk(
                net, xs[lo:hi], ys[lo:hi], None if ts is None else ts[lo:hi]
            )
            restarted = [a + b for a, b in zip(restarted, reruns, strict=True)]
            flows.append(flow)
            solved.append(res)
        flow_all = torch.cat(flows) if flows else xs.new_zeros((0, 2, *xs.shape[2:]))
        adv = self._warp(xs, flow_all).clamp(0, 1) if xs.shape[0] else xs
        lflow = self._flow_loss(flow_all) if xs.shape[0] else xs.new_zeros(0)
        return batch.finish(
            adv.detach(),
            iterations=_cat_long([r.iterations for r in solved], device),
            evaluations=_cat_long([r.evaluations for r in solved], device),
            stop_reason=tuple(reason for r in solved for reason in r.stop_reason),
            flows=flow_all.detach(),
            flow_loss=lflow.detach(),
            extra={"attack": self.name, "params": self.to_dict(), "restarted": restarted},
        )

    def _warp(self, images: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        # options validated in __post_init__: the unchecked warp, in the objective's loop too
        return warp_unchecked(images, flow, self.padding, self.units)

    def _flow_loss(self, flow: torch.Tensor) -> torch.Tensor:
        return flow_loss_unchecked(
            flow, self.flow_loss, self.neighbours, self.flow_eps, self.eq5_scale
        )

    def _initial_flow(self, x: torch.Tensor, goal: torch.Tensor, restart: int = 0) -> torch.Tensor:
        """Initial flows (M, 2, H, W) for the attacks on images ``x`` (M, C, H, W), run ``restart``.

        Run 0 uses ``init``; restart ``k`` is Gaussian with std
        ``restart_scale * restart_growth ** (k - 1)``. Each attack's draw
        comes from a generator seeded by (``seed``, ``restart``, its image's bytes, its target
        or label ``goal`` (M,)), so an attack gets the same draw in any batch, chunk or order.
        """
        n, _, h, w = x.shape
        init = self.init if restart == 0 else "gaussian"
        if init == "zeros" or n == 0:
            return x.new_zeros((n, 2, h, w))
        scale = (
            self.effective_init_scale
            if restart == 0
            else float(self.restart_scale) * float(self.restart_growth) ** (restart - 1)
        )
        # raw bytes per image (any dtype, bfloat16 included, which NumPy lacks)
        images = x.detach().cpu().contiguous().flatten(1).view(torch.uint8).numpy()
        draws = []
        for image, cls in zip(images, goal.tolist(), strict=True):
            key = hashlib.blake2b(image.tobytes(), digest_size=8)
            key.update(struct.pack("<qqq", self.seed, restart, int(cls)))
            gen = torch.Generator().manual_seed(int.from_bytes(key.digest(), "little") >> 1)
            if init == "gaussian":
                draws.append(torch.randn((2, h, w), generator=gen) * scale)
            else:
                draws.append(torch.rand((2, h, w), generator=gen) * scale)
        return torch.stack(draws).to(device=x.device, dtype=x.dtype)

    def _attack_chunk(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor | None,
    ) -> tuple[torch.Tensor, SolverResult, list[int]]:
        """Solve one chunk of independent attacks, restarting the failed ones (``restarts``).

        Returns the kept flows, the solver statistics (iterations and evaluations summed over
        the runs of each attack, the stop reason of its last run) and, per restart, how many
        attacks it re-solved.
        """
        flow, found, res = self._solve_rows(model, x, y, t, restart=0)
        found = self._confirmed(model, x, y, t, flow, found)
        iterations = res.iterations.to(torch.int64).clone()
        evaluations = res.evaluations.to(torch.int64).clone()
        reasons = list(res.stop_reason)
        x_last, f_last = res.x.clone(), res.f.clone()
        reruns = [0] * self.restarts
        # max_iterations = 0 returns the initial flow: nothing to restart
        for k in range(1, (self.restarts if self.max_iterations > 0 else 0) + 1):
            failed = (~found).nonzero().squeeze(1)
            if failed.numel() == 0:
                break
            reruns[k - 1] = int(failed.numel())
            sub_t = None if t is None else t[failed]
            sub_flow, sub_found, sub = self._solve_rows(
                model, x[failed], y[failed], sub_t, restart=k
            )
            sub_found = self._confirmed(model, x[failed], y[failed], sub_t, sub_flow, sub_found)
            # a restart that also fails keeps its own last iterate (keep="last"/"best" alike)
            flow[failed] = sub_flow
            found[failed] = sub_found
            x_last[failed], f_last[failed] = sub.x, sub.f
            iterations[failed] += sub.iterations.to(iterations.device, torch.int64)
            evaluations[failed] += sub.evaluations.to(evaluations.device, torch.int64)
            for j, reason in zip(failed.tolist(), sub.stop_reason, strict=True):
                reasons[j] = reason
        result = SolverResult(x_last, f_last, iterations, evaluations, tuple(reasons))
        return flow, result, reruns

    def _solve_rows(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor | None,
        *,
        restart: int,
    ) -> tuple[torch.Tensor, torch.Tensor, SolverResult]:
        """One solver run for the attacks (x, y, t): kept flows, found mask, solver stats."""
        n, _, h, w = x.shape
        flow_shape = (2, h, w)
        x0 = self._initial_flow(x, y if t is None else t, restart).reshape(n, -1)
        best_flow = x0.detach().clone().view(n, *flow_shape)
        best_loss = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)

        def objective(rows: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.enable_grad():
                flow = rows.detach().to(x.dtype).view(-1, *flow_shape).requires_grad_(True)
                adv = self._warp(x[idx], flow)
                logits = model(adv)
                scores = logits.softmax(dim=1) if self.loss_input == "softmax" else logits
                margin = margin_loss(scores, y[idx], None if t is None else t[idx])
                l_adv = self._searched_l_adv(margin)
                l_flow = self._flow_loss(flow)
                total = l_adv + self.tau * l_flow
                (grad,) = torch.autograd.grad(total.sum(), flow)
            with torch.no_grad():
                ok = self._accepted(logits, margin, y[idx], None if t is None else t[idx])
                better = ok & (l_flow < best_loss[idx])
                if bool(better.any()):
                    sel = idx[better]
                    best_flow[sel] = flow.detach()[better]
                    best_loss[sel] = l_flow.detach()[better]
                found[idx] |= ok
            return total.detach().to(rows.dtype), grad.reshape(rows.shape).to(rows.dtype)

        polish = self.effective_polish
        # accepted iterations each attack has run since its first success (-1: none yet)
        since = torch.full((n,), -1, dtype=torch.int64, device=x.device)

        def should_stop(idx: torch.Tensor) -> torch.Tensor:
            hit = found[idx]
            since[idx[hit]] += 1
            return hit & (since[idx] >= polish)

        stop_fn = should_stop if self.stop == "first-success" else None
        res = self._solve(objective, x0, stop_fn)
        last = res.x.detach().view(n, *flow_shape).to(x.dtype)
        if self.keep == "best":
            flow = torch.where(found.view(n, 1, 1, 1), best_flow, last)
        else:
            flow = last
        return flow, found, res

    def _searched_l_adv(self, margin: torch.Tensor) -> torch.Tensor:
        """The searched L_adv (M,) of the loss ``margin`` (M,) (``max_{i!=t} Z_i - Z_t``):
        the paper's hinge ``max(margin, -k)`` with ``hinge="exact"``, else its softplus
        smoothing ``-k + w * softplus((margin + k + s) / w)`` (``w = hinge_width``,
        ``s = hinge_shift``), with ``k`` = :attr:`search_kappa`. Both fall to ``-k`` deep in
        the success region and rise with slope 1 outside it."""
        floor = self.search_kappa
        if self.hinge == "exact":
            return margin.clamp(min=-floor)
        width = self.hinge_width
        return -floor + width * torch.nn.functional.softplus(
            (margin + floor + self.hinge_shift) / width
        )

    @property
    def _bf16_allowance(self) -> float:
        """:data:`~stadv.precision.BF16_LOGIT_ERROR` under ``precision="bf16"``, else 0."""
        return BF16_LOGIT_ERROR if self.precision == "bf16" else 0.0

    @property
    def search_kappa(self) -> float:
        """The hinge's floor in the searched objective: ``kappa``, plus
        :data:`~stadv.precision.BF16_LOGIT_ERROR` under ``precision="bf16"`` (at kappa 0 the
        objective stops pulling at a margin of 0, where bfloat16's logits cannot tell success
        from failure, so the search would never settle :attr:`acceptance_margin` inside)."""
        return self.kappa + self._bf16_allowance

    @property
    def acceptance_margin(self) -> float:
        """How far inside the success region (in logits) the search accepts an iterate:
        ``success_margin``, plus :data:`~stadv.precision.BF16_LOGIT_ERROR` under
        ``precision="bf16"``, whose logits are that much less exact than the fp32 verdict's."""
        return self.success_margin + self._bf16_allowance

    def _accepted(
        self,
        logits: torch.Tensor,
        margin: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor | None,
    ) -> torch.Tensor:
        """The search's acceptance test (M,) of iterates with ``logits`` (M, K) and loss
        ``margin`` (M,), at :attr:`acceptance_margin` (:func:`_passes`)."""
        accept = self.acceptance_margin
        if accept > 0 and self.loss_input != "logits":
            margin = margin_loss(logits, y, t)
        return _passes(logits, margin, y, t, accept)

    def _confirmed(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor | None,
        flow: torch.Tensor,
        found: torch.Tensor,
    ) -> torch.Tensor:
        """``found`` (M,) where the kept ``flow`` also succeeds in strict fp32 with
        ``success_margin`` (one forward pass of the found rows): under ``precision="bf16"`` an
        attack whose kept iterate fails in fp32 counts as failed, so a restart solves it again.
        Under the other policies ``found`` as it is (the search's own test is the fp32 one)."""
        rows = found.nonzero().squeeze(1)
        if self.precision != "bf16" or rows.numel() == 0:
            return found
        sub_t = None if t is None else t[rows]
        with torch.no_grad(), precision_policy_unchecked("fp32"):
            logits = model(self._warp(x[rows], flow[rows]))
        margin = margin_loss(logits, y[rows], sub_t)
        confirmed = found.clone()
        confirmed[rows] = _passes(logits, margin, y[rows], sub_t, self.success_margin)
        return confirmed

    def _solve(self, objective: Any, x0: torch.Tensor, should_stop: Any) -> SolverResult:
        if self.solver == "lbfgs":
            from stadv.solvers.lbfgs import lbfgs_minimize

            return lbfgs_minimize(
                objective,
                x0,
                max_iterations=self.max_iterations,
                pgtol=self.pgtol,
                factr=self.factr,
                history=self.history,
                max_linesearch=self.max_linesearch,
                wolfe=self.effective_wolfe,
                should_stop=should_stop,
                max_active=self.batch_size if self.effective_batching == "continuous" else None,
            )
        if self.solver in ("scipy", "scipy-loop"):
            from stadv.solvers.scipy_lbfgsb import scipy_lbfgsb_minimize

            return scipy_lbfgsb_minimize(
                objective,
                x0,
                max_iterations=self.max_iterations,
                pgtol=self.pgtol,
                factr=self.factr,
                history=self.history,
                max_linesearch=self.max_linesearch,
                should_stop=should_stop,
                batched=self.solver == "scipy",
            )
        from stadv.solvers.adam import adam_minimize

        return adam_minimize(
            objective, x0, steps=self.max_iterations, lr=self.lr, should_stop=should_stop
        )


def _passes(
    logits: torch.Tensor,
    logit_margin: torch.Tensor,
    y: torch.Tensor,
    t: torch.Tensor | None,
    threshold: float,
) -> torch.Tensor:
    """Success (M,) with a hysteresis: ``logit_margin <= -threshold`` when ``threshold > 0``
    (which implies the argmax test), else the argmax test itself (target reached, or label
    left when ``t`` is None)."""
    if threshold > 0:
        return logit_margin <= -threshold
    pred = logits.argmax(dim=1)
    return pred == t if t is not None else pred != y


def _cat_long(parts: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    if not parts:
        return torch.zeros(0, dtype=torch.int64, device=device)
    return torch.cat([p.to(device=device, dtype=torch.int64) for p in parts])
