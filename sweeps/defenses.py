"""Attacks against defenses: {FGSM, C&W, stAdv} x {undefended, FGSM-adv, ensemble-adv, PGD-adv,
blur, denoiser} x {A, B, C}: the paper's second claim (Xiao et al. 2018), that stAdv still
succeeds where adversarial training stops pixel-space attacks.

One Ray Tune trial per (model, defense, attack), logged like the other sweeps (a parent run,
nested child runs with parameters, metrics, tags and artifacts). Each trial attacks the first
``--n-images`` test images, one random target per image (seeded: the same targets for every
attack, defense and model; the target protocol of the paper's defense table could not be
checked here: ``--targets all`` gives the Table 1 protocol),
with the attack's defaults: FGSM eps 0.3 (the paper's defense table), C&W L2 with a 5-step
binary search from c = 1e-2 and 200 Adam steps per step (CPU-feasible; the reference code's
9 x 10,000 from c = 1e-3 with --preset paper), stAdv at tau 0.05, kappa 0. Blur (3x3,
sigma 1) and the denoiser sit in front of the undefended model; the attacks differentiate
through them (white-box). At the end: a table of attack success with Wilson 95 % intervals and
each defended model's clean test accuracy.

Defended models missing from the model store are trained once, in the driver, before the
trials. The CPU default (--preset cpu): adversarial training from scratch on the first
10,000 training images for one epoch (Adam 1e-3, batch 64): FGSM-adv and ensemble-adv with
FGSM eps 0.3 (half clean, half adversarial loss; ensemble sources: the model itself and the
other two undefended architectures), PGD-adv with 20 steps of 0.02 in the 0.3 ball (the same
0.4 path length as Madry et al.'s 40 x 0.01), half its loss on clean images
(``--pgd-adv-weight``; Madry et al.'s adversarial-only loss collapsed Model A to 9.82 % clean
accuracy at this size, measured); the denoiser 2 epochs on 10,000 images. Measured
on the project's 2-core CPU (one torch thread, a few batches, other jobs on both cores), per
training image summed over A, B and C: 13 ms FGSM-adv, 15 ms ensemble-adv, 69 ms PGD-adv, so
~16 min for all nine adversarially trained models, plus ~2 min for the denoiser and the
clean-accuracy evaluations: ~18 min, once. The undefended A, B, C are the main sweep's
(trained with their full recipe if missing, which takes longer than all of this). Such models
are weaker than the paper's: their clean accuracy is in the table. The 54 trials then take an
estimated ~15 min on the 2 cores (from single-attack timings on the undefended models: stAdv
1-2 s, C&W 0.5-1.5 s per image; a defended model may need more iterations).

--preset paper trains on all 60,000 images with each model's epochs (6; C: 10, as the
undefended C) and PGD 40 x 0.01, as ``stadv train --defense`` does (the same checkpoints),
and attacks 10,000 images: for a GPU (the driver trains on its own device).
Every setting is recorded in the checkpoint's sidecar and the runs' parameters; a stored model
trained otherwise than asked is an error, never used silently.

    python sweeps/defenses.py                          # CPU default: 54 trials, 30 images each
    python sweeps/defenses.py --models B --defenses none pgd blur --attacks fgsm stadv
    python sweeps/defenses.py --address auto --tracking-uri http://mlflow:5000 --preset paper
    python sweeps/defenses.py --smoke-test             # model B, tiny, well under a minute
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # Python put this script's folder first on sys.path (that is how the sibling modules
    # import), and this file bears the library package's name: import the package with the
    # folder set aside, so that every later `import defenses...` finds it in sys.modules.
    _folder = sys.path.pop(0)
    import defenses  # noqa: F401  (the library package, not this file)

    sys.path.insert(0, _folder)
    import defense_sweep

    sys.exit(defense_sweep.main(__doc__ or ""))
