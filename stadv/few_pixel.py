"""Few-pixel attack by differential evolution (Su, Vargas & Sakurai, IEEE TEVC 2019, arXiv
1710.08864: "One pixel attack for fooling deep neural networks"), untargeted and targeted.

A candidate changes k pixels of the image x: it is k tuples (row, column, value per channel).
A population of S candidates evolves by DE/rand/1 without crossover (Su et al., Section III.B;
SciPy's ``rand1bin`` with ``recombination=1``): for every member i, with r1, r2, r3 distinct and
different from i, drawn anew each generation::

    child_i = clip(z_{r1} + F * (z_{r2} - z_{r3}))
    z_i    <- child_i   if fitness(child_i) <= fitness(z_i)

and the fitness the model's softmax probability, to be minimised::

    fitness(z) = p_y(x_z)           (untargeted: the true class's probability)
    fitness(z) = 1 - p_t(x_z)       (targeted: the target's probability)

where x_z is x with the k pixels of z set (row and column floored to integers; a later pixel
of z wins where two coincide, so at most k pixels change). Rows, columns and values start
uniform over the image and ``bounds``; children are clipped to them. An image stops at the
first generation in which some child (or member of the initial population) succeeds (the
prediction leaves the label, or reaches the target) and returns the successful candidate of
lowest fitness; otherwise, after ``generations`` generations, the population's best member.

Batched: every generation renders the children of *every* image still running into one batch
and evaluates it in one model call (``max_batch`` can split it). The random draws (initial
population, the triples r1, r2, r3) are made once per generation from a ``torch.Generator``
seeded with ``seed`` and shared by all images, so an image's attack is exactly the one it
gets alone, whatever the batch and however early the others stop.

Implementation choice (``benchmarks/new_attacks.py``, which also runs SciPy's
``differential_evolution(vectorized=True)`` on the same encoding and fitness, one image at a
time with that image's ~100 candidates in one call): on Model B quick-trained (n = 20 images,
population 100, 20 generations, one thread of a shared 2-core CPU) both reached the same
success (1/20 for each of k = 1, 3, 5) after the same number of model evaluations (~40,000).
Both are bound by the model's forward pass, so speed is CPU time per model evaluation: with
every child of a generation in one 2,000-image call (``max_batch=None``) this implementation
took 0.27-0.28 ms against SciPy's 0.21-0.22 ms (0.76x and 0.81x SciPy's attacks/s for
k = 1 and 5: large CPU batches fall out of cache); with ``max_batch=256`` it took 0.18-0.20 ms
against 0.20-0.22 ms, the faster of the two (1.14x SciPy's attacks/s for k = 1). So this
batched torch implementation is the one kept. By default it calls the model on 256
candidates at a time on a CPU, and once per generation on a GPU, where one large call is what
pays (not measured: no GPU in that session). It also needs no NumPy round trip, and a batch
gives each image exactly its own attack.

``fitness_precision="bf16"`` evaluates the population in bfloat16 autocast (2-3x less CPU time
per evaluation on Models A/B/C on an AVX-512-BF16 CPU) and confirms in fp32 every candidate
that could be a success, so no success is ever taken from a bfloat16 evaluation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar, Literal, get_args

import torch
from torch import nn

from stadv.attack_base import AttackBatch, PixelAttack, check_attack_fields
from stadv.local_forward import LocalForward, local_layers, runs_locally
from stadv.options import check_choice, check_int, check_real
from stadv.precision import Precision
from stadv.result import AttackResult

FitnessPrecision = Literal["fp32", "bf16"]
Strategy = Literal["rand1", "best1"]
OutOfBounds = Literal["clip", "resample"]
FitnessForward = Literal["full", "local", "auto"]

#: Logit units: a candidate whose bfloat16 margin (the winning logit minus the best other, the
#: sign that means success) is above ``-CONFIRM_BAND`` is evaluated again in fp32, and only that
#: evaluation says whether it succeeded. On Models A, B and C, over 8,000 three-pixel candidates
#: each, bfloat16 autocast moved a logit by at most 0.12 / 0.10 / 0.16 (a margin by at most
#: twice that); the band leaves three times that room.
CONFIRM_BAND = 1.0

#: Logit units: under ``fitness_forward="local"`` (fp32) a candidate whose margin is above
#: ``-LOCAL_CONFIRM_BAND`` is evaluated again by the whole model. The local pass sums in
#: another order than the model's own where kernels differ (on this project's CPU its logits
#: were the model's, bit for bit: ``benchmarks/local_forward.py``).
LOCAL_CONFIRM_BAND = 1e-2

#: Candidate images per model call on a CPU when ``max_batch`` is None (see the module docstring).
CPU_MAX_BATCH = 256


@dataclass(frozen=True, kw_only=True)
class FewPixel(PixelAttack):
    """Few-pixel attack by differential evolution (Su et al. 2019). Hyper-parameters only.

    Args (keyword-only; defaults in brackets, the paper's):
        pixels: k, pixels changed [1]; the paper reports k = 1, 3 and 5. >= 1.
        population: S, candidates per image [400]. >= 4 (DE/rand/1 needs three others).
        generations: DE generations [100]. >= 0 (0: the random initial population only).
        mutation: F, the differential weight [0.5]. Finite, > 0.
        mutation_high: None [default: F = ``mutation`` in every generation, the paper's] or
            a number > ``mutation``: F drawn anew each generation uniformly in
            [``mutation``, ``mutation_high``) (SciPy's "dithering"; SciPy and torchattacks'
            ``OnePixel`` draw F in [0.5, 1)).
        strategy: ``"rand1"`` [default, the paper's DE/rand/1: child_i = z_r1 + F (z_r2 -
            z_r3)] or ``"best1"`` (DE/best/1: child_i = z_best + F (z_r1 - z_r2), z_best the
            image's fittest member; SciPy's default ``best1bin``, which torchattacks'
            ``OnePixel`` runs).
        out_of_bounds: what a child's coordinate outside its range becomes: ``"clip"``
            [default: the nearest bound, so a row or column lands on the image's border] or
            ``"resample"`` (a fresh uniform draw in its range: SciPy's
            ``differential_evolution``, which Su et al.'s and torchattacks' code run).
        seed: seeds the population and the mutation draws, and the ``"random"`` targets [0].
        bounds: valid pixel range (low, high) [(0.0, 1.0)]; a changed pixel takes any value in it.
        num_classes: classes of the model [10].
        check: warn (:mod:`stadv.sanity`) about probability outputs or zero gradients [True].
        precision: the float32 policy of the attack's model evaluations, ``"fp32"`` [default,
            strict] or ``"tf32"`` (TF32 convolutions and matmuls on Ampere+ GPUs); the
            verdict on the returned images is strict fp32 either way
            (:mod:`stadv.precision`). ``"bf16"`` is refused: ``fitness_precision`` is this
            attack's bfloat16 switch.
        fitness_precision: the dtype of the population's fitness evaluations, ``"fp32"``
            [default] or ``"bf16"`` (``torch.autocast`` to bfloat16 on the images' device: on
            this project's AVX-512-BF16 CPU 2-3x less time per evaluation, see
            ``benchmarks/new_attacks.py``). Under ``"bf16"`` selection uses the bfloat16
            fitness, but a candidate counts as a success only when an fp32 evaluation says so:
            every candidate within ``CONFIRM_BAND`` logits of success is evaluated again in fp32
            (counted in ``evaluations``), and the verdict on the returned images is strict fp32
            as always. So bfloat16 changes the search's path, never what is reported.
        fitness_forward: how a candidate's logits are computed, ``"full"`` [default: the model
            on the whole image] or ``"local"`` (:class:`stadv.local_forward.LocalForward`: the
            clean image's activations are kept and each convolution recomputed only where the
            k changed pixels reach it; the model's logits, to float rounding). It saves CPU time
            per evaluation the fewer layer positions the k pixels reach
            (``benchmarks/local_forward.py`` measures it per model and k); none on Model B,
            whose second convolution every pixel reaches. The model must be a ``Sequential``
            of convolutions and element-wise modules up to a ``Flatten`` (a ``ValueError``
            names the module that is not). Candidates within ``LOCAL_CONFIRM_BAND`` logits of
            success (``CONFIRM_BAND`` under bfloat16) are evaluated again by the whole model in
            fp32, and only that evaluation says success. ``"auto"``: ``"local"`` where the
            model is such a network, else ``"full"``.
        max_batch: runtime only, not an option: most candidate images per model call [None:
            ``CPU_MAX_BATCH`` (256) on a CPU, and on other devices all of a generation's children
            in one call, the choice for a GPU]; does not change the result. On a CPU ~256 takes
            ~30 % less CPU time per evaluation than one call of thousands of images (see the
            module docstring).

    Call: ``attack(model, images, labels, targets=None) -> AttackResult`` with ``images``
    (N, C, H, W) in ``bounds``, ``labels`` (N,), ``targets`` None (untargeted) or a tensor /
    protocol of :mod:`stadv.targets`. An image the model already gets wrong (untargeted) or
    already assigns to its target is returned unchanged. ``iterations`` counts generations
    run, ``evaluations`` model evaluations (S per generation plus S for the initial
    population, plus one for the clean check); ``extra["pixels_changed"]`` (M,) counts the
    pixels (positions, any channel) that differ from the source, at most k.

    Example::

        >>> result = FewPixel(pixels=3)(model, images, labels)            # untargeted
        >>> result.success_rate, result.extra["pixels_changed"].max()      # <= 3
    """

    name: ClassVar[str] = "few-pixel"
    label: ClassVar[str] = "Few-pixel DE"

    pixels: int = 1
    population: int = 400
    generations: int = 100
    mutation: float = 0.5
    mutation_high: float | None = None
    strategy: Strategy = "rand1"
    out_of_bounds: OutOfBounds = "clip"
    seed: int = 0
    bounds: tuple[float, float] = (0.0, 1.0)
    num_classes: int = 10
    check: bool = True
    precision: Precision = "fp32"
    fitness_precision: FitnessPrecision = "fp32"
    fitness_forward: FitnessForward = "full"
    max_batch: int | None = field(default=None, metadata={"option": False})

    def __post_init__(self) -> None:
        check_int("pixels", self.pixels, low=1)
        check_int("population", self.population, low=4)
        check_int("generations", self.generations, low=0)
        check_real("mutation", self.mutation, strict=True)
        if self.mutation_high is not None:
            check_real("mutation_high", self.mutation_high, strict=True)
            if not self.mutation_high > self.mutation:
                raise ValueError(
                    f"mutation_high must be > mutation ({self.mutation!r}), "
                    f"got {self.mutation_high!r}"
                )
        check_choice("strategy", self.strategy, get_args(Strategy))
        check_choice("out_of_bounds", self.out_of_bounds, get_args(OutOfBounds))
        check_choice("fitness_precision", self.fitness_precision, get_args(FitnessPrecision))
        check_choice("fitness_forward", self.fitness_forward, get_args(FitnessForward))
        if self.max_batch is not None:
            check_int("max_batch", self.max_batch, low=1)
        check_attack_fields(self)
        if self.precision == "bf16":
            raise ValueError(
                "precision='bf16' is not used by few-pixel (its fitness sets its own dtype): "
                "use fitness_precision='bf16', which confirms every near success in fp32"
            )

    # -- candidates --------------------------------------------------------------------------

    def _initial(self, shape: tuple[int, int, int], gen: torch.Generator) -> torch.Tensor:
        """(S, k, 2 + C) uniform candidates: row in [0, H), column in [0, W), values in bounds."""
        c, h, w = shape
        u = torch.rand(self.population, self.pixels, 2 + c, generator=gen, dtype=torch.float64)
        low, high = self.bounds
        scale = torch.tensor([h, w] + [high - low] * c, dtype=torch.float64)
        shift = torch.tensor([0.0, 0.0] + [low] * c, dtype=torch.float64)
        return u * scale + shift

    def _clip(self, z: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        _, h, w = shape
        z[..., 0].clamp_(0, h - 1e-6)
        z[..., 1].clamp_(0, w - 1e-6)
        z[..., 2:].clamp_(*self.bounds)
        return z

    def _triples(self, gen: torch.Generator) -> torch.Tensor:
        """(S, 3) indices r1, r2, r3: distinct, and different from the row's own index."""
        s = self.population
        keys = torch.rand(s, s, generator=gen)
        keys.fill_diagonal_(2.0)  # never among the three smallest
        return keys.argsort(dim=1)[:, :3]

    def _children(
        self,
        pop: torch.Tensor,
        fit: torch.Tensor,
        gen: torch.Generator,
        shape: tuple[int, int, int],
    ) -> torch.Tensor:
        """One generation's mutants (P, S, k, 2 + C) of the populations ``pop`` of P images
        with fitness ``fit`` (P, S): DE/rand/1 or DE/best/1 (``strategy``), F fixed or dithered
        (``mutation_high``), clipped to the image and ``bounds``. The draws are shared by the
        images, so an image's attack does not depend on the batch."""
        r = self._triples(gen)
        f = self.mutation
        if self.mutation_high is not None:
            u = float(torch.rand((), generator=gen, dtype=torch.float64))
            f = self.mutation + (self.mutation_high - self.mutation) * u
        if self.strategy == "best1":
            best = fit.argmin(dim=1).cpu()
            base = pop[torch.arange(pop.shape[0]), best].unsqueeze(1)
            mutant = base + f * (pop[:, r[:, 0]] - pop[:, r[:, 1]])
        else:
            mutant = pop[:, r[:, 0]] + f * (pop[:, r[:, 1]] - pop[:, r[:, 2]])
        if self.out_of_bounds == "resample":
            fresh = self._initial(shape, gen)  # (S, k, 2 + C), shared by the images
            low, high = self._ranges(shape)
            outside = (mutant < low) | (mutant >= high)
            mutant = torch.where(outside, fresh.expand_as(mutant), mutant)
        return self._clip(mutant, shape)

    def _ranges(self, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(2 + C,) lower and upper ends of a candidate pixel's row, column and values."""
        c, h, w = shape
        low, high = self.bounds
        lo = torch.tensor([0.0, 0.0] + [low] * c, dtype=torch.float64)
        hi = torch.tensor([float(h), float(w)] + [high] * c, dtype=torch.float64)
        # a value may equal the upper bound; a row or column may not reach H or W
        hi[2:] = torch.nextafter(hi[2:], torch.tensor(float("inf"), dtype=torch.float64))
        return lo, hi

    @staticmethod
    def _positions(z: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer rows and columns (B, k) of the pixels of candidates ``z`` (B, k, 2 + C)."""
        return z[..., 0].floor().long().clamp(0, h - 1), z[..., 1].floor().long().clamp(0, w - 1)

    @staticmethod
    def render(images: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) with the pixels of candidates ``z`` (B, k, 2 + C) set."""
        b, c, h, w = images.shape
        out = images.reshape(b, c, h * w).clone()
        rows, cols = FewPixel._positions(z, h, w)
        pos = rows * w + cols  # (B, k)
        values = z[..., 2:].to(images.dtype)  # (B, k, C)
        for j in range(z.shape[1]):  # in order: a later pixel wins where two coincide
            out.scatter_(2, pos[:, j].view(b, 1, 1).expand(b, c, 1), values[:, j].unsqueeze(2))
        return out.view(b, c, h, w)

    # -- the attack --------------------------------------------------------------------------

    def _logits(self, net: nn.Module, imgs: torch.Tensor, low: bool) -> torch.Tensor:
        """fp32 logits of ``imgs``, computed in bfloat16 autocast when ``low``, in chunks of
        ``max_batch``."""
        step = self._step(imgs)
        out = []
        with torch.no_grad(), torch.autocast(imgs.device.type, torch.bfloat16, enabled=low):
            for i in range(0, imgs.shape[0], step):
                out.append(net(imgs[i : i + step]).float())
        return torch.cat(out) if out else imgs.new_zeros(0, self.num_classes)

    def _step(self, imgs: torch.Tensor) -> int:
        """Candidate images per model call: ``max_batch``, else ``CPU_MAX_BATCH`` on a CPU and
        all of ``imgs`` elsewhere."""
        return self.max_batch or (CPU_MAX_BATCH if imgs.device.type == "cpu" else imgs.shape[0])

    def _local_logits(
        self, fwd: LocalForward, owner: torch.Tensor, imgs: torch.Tensor, z: torch.Tensor, low: bool
    ) -> torch.Tensor:
        """fp32 logits of the candidates ``imgs`` (P S, C, H, W), the pixels ``z`` (P S, k,
        2 + C) of the clean images ``owner`` (P S,) of ``fwd``, by :class:`LocalForward`, in
        chunks."""
        rows, cols = self._positions(z.to(imgs.device), imgs.shape[-2], imgs.shape[-1])
        step = self._step(imgs)
        out = []
        with torch.autocast(imgs.device.type, torch.bfloat16, enabled=low):
            for i in range(0, imgs.shape[0], step):
                sl = slice(i, i + step)
                out.append(fwd(imgs[sl], owner[sl], rows[sl], cols[sl]).float())
        return torch.cat(out) if out else imgs.new_zeros(0, self.num_classes)

    @staticmethod
    def _margin(logits: torch.Tensor, cls: torch.Tensor, targeted: bool) -> torch.Tensor:
        """Z_t - max_{i!=t} Z_i (targeted) or max_{i!=y} Z_i - Z_y (untargeted): positive
        where the candidate succeeds."""
        own = logits.gather(1, cls.unsqueeze(1)).squeeze(1)
        other = logits.scatter(1, cls.unsqueeze(1), float("-inf")).max(dim=1).values
        return own - other if targeted else other - own

    def _evaluate(
        self,
        net: nn.Module,
        images: torch.Tensor,
        idx: torch.Tensor,
        z: torch.Tensor,
        cls: torch.Tensor,
        targeted: bool,
        fwd: LocalForward | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fitness and success (P, S) of candidates ``z`` (P, S, k, 2 + C) on the images
        ``images[idx]`` (P, ...), and the model evaluations made per image (P,): S, plus the
        fp32 confirmations under ``fitness_precision="bf16"`` or a local pass ``fwd`` (a
        :class:`LocalForward` of all of ``images``) computing the logits."""
        x = images[idx]
        p, s = z.shape[:2]
        imgs = self.render(
            x.unsqueeze(1).expand(p, s, *x.shape[1:]).reshape(p * s, *x.shape[1:]),
            z.reshape(p * s, *z.shape[2:]).to(x.device),
        )
        per = cls.repeat_interleave(s)
        low = self.fitness_precision == "bf16"
        if fwd is not None:
            owner = idx.repeat_interleave(s)
            logits = self._local_logits(fwd, owner, imgs, z.reshape(p * s, *z.shape[2:]), low)
        else:
            logits = self._logits(net, imgs, low)
        evals = torch.full((p,), s, dtype=torch.int64, device=x.device)
        confirm = low or fwd is not None
        if confirm:
            band = CONFIRM_BAND if low else LOCAL_CONFIRM_BAND
            near = (self._margin(logits, per, targeted) > -band).nonzero().flatten()
            if near.numel():
                logits[near] = self._logits(net, imgs[near], False)
                evals += torch.bincount(near // s, minlength=p)
        pred = logits.argmax(dim=1)
        hit = (pred == per) if targeted else (pred != per)
        if confirm:  # only the model's fp32 evaluation says success: outside the band, none
            confirmed = torch.zeros_like(hit)
            confirmed[near] = True
            hit &= confirmed
        prob = logits.double().softmax(dim=1).gather(1, per.unsqueeze(1)).squeeze(1)
        fit = (1 - prob) if targeted else prob
        return fit.view(p, s), hit.view(p, s), evals

    def _attack(self, batch: AttackBatch) -> AttackResult:
        net, x, y, t = batch.net, batch.images, batch.labels, batch.targets
        m = x.shape[0]
        dev = x.device
        shape = (x.shape[1], x.shape[2], x.shape[3])
        targeted = t is not None
        cls = t if t is not None else y
        if self.fitness_forward == "local":
            local_layers(net)  # a model it cannot run is named before any work
        fwd = None  # the clean activations of every image, once per attack
        if self.fitness_forward == "local" or (
            self.fitness_forward == "auto" and runs_locally(net)
        ):
            fwd = LocalForward(net, x)
        gen = torch.Generator().manual_seed(self.seed)
        adv = x.clone()
        iters = torch.zeros(m, dtype=torch.int64, device=dev)
        evals = torch.ones(m, dtype=torch.int64, device=dev)
        reasons = ["generations"] * m
        with torch.no_grad():
            clean = net(x).argmax(dim=1) if m else y
        done = (clean == cls) if targeted else (clean != cls)
        for i in done.nonzero().flatten().tolist():
            reasons[i] = "already_adversarial"
        idx = (~done).nonzero().flatten()
        z0 = self._initial(shape, gen)
        pop = z0.unsqueeze(0).expand(idx.numel(), *z0.shape).clone()
        if idx.numel():
            fit, hit, made = self._evaluate(net, x, idx, pop, cls[idx], targeted, fwd)
            evals[idx] += made
            idx, pop, fit = self._finish_hits(adv, reasons, x, idx, pop, fit, hit)
        for g in range(1, self.generations + 1):
            if idx.numel() == 0:
                break
            child = self._children(pop, fit, gen, shape)
            cfit, chit, made = self._evaluate(net, x, idx, child, cls[idx], targeted, fwd)
            iters[idx] = g
            evals[idx] += made
            better = cfit <= fit
            pop = torch.where(better.cpu()[..., None, None], child, pop)
            fit = torch.where(better, cfit, fit)
            idx, pop, fit = self._finish_hits(adv, reasons, x, idx, child, cfit, chit, pop, fit)
        if idx.numel():
            best = fit.argmin(dim=1).cpu()
            rows = torch.arange(idx.numel())
            adv[idx] = self.render(x[idx], pop[rows, best].to(dev))
        changed = (adv != x).any(dim=1).flatten(1).sum(dim=1)
        return batch.finish(
            adv,
            iterations=iters,
            evaluations=evals,
            stop_reason=reasons,
            extra={
                "attack": self.name,
                "params": {k: v for k, v in asdict(self).items() if k != "max_batch"},
                "pixels_changed": changed.cpu(),
            },
        )

    def _finish_hits(
        self,
        adv: torch.Tensor,
        reasons: list[str],
        x: torch.Tensor,
        idx: torch.Tensor,
        cand: torch.Tensor,
        cfit: torch.Tensor,
        chit: torch.Tensor,
        pop: torch.Tensor | None = None,
        fit: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Writes the best successful candidate of every image with a hit into ``adv`` and
        drops those images; returns the remaining (idx, population, fitness)."""
        pop = cand if pop is None else pop
        fit = cfit if fit is None else fit
        hits = chit.any(dim=1)
        if bool(hits.any()):
            masked = torch.where(chit, cfit, torch.full_like(cfit, float("inf")))
            best = masked.argmin(dim=1)
            rows = hits.nonzero().flatten()
            won = cand[rows.cpu(), best[rows].cpu()]
            adv[idx[rows]] = self.render(x[idx[rows]], won.to(adv.device))
            for i in idx[rows].tolist():
                reasons[i] = "success"
        keep = ~hits
        return idx[keep], pop[keep.cpu()], fit[keep]
