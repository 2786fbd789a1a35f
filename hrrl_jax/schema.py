"""Every config key with its default, the names it may take, and durations in epochs (jax-free).

The modules that use a name (robust method, optimizer, model, data set) import the allowed names from here; the
library core `hrrl_jax.robust` keeps its own, tested to be equal. `hrrl_jax.config_checks` checks a whole config.

Optional values are None when unset. They are `placeholder(object)` rather than typed placeholders so that
`--config.KEY=None` unsets them on the command line (a typed placeholder's flag parser cannot parse None);
`validate_config` checks their type instead. `eval_every_steps=0` means "evaluate at the end only".
"""

from __future__ import annotations

import math
import re
from typing import Any

import ml_collections
from ml_collections import config_dict

ROBUST_METHODS = ("erm", "el", "cl", "hrrl", "group_dro")
EXAMPLE_LEVELS = ("reweight", "perturb", "input")  # The trainer's; the library's transform knows reweight | none.
DIVERGENCES = ("l2", "kl", "wasserstein", "none")  # Concept level; none: no concept-level reweighting.
LAM_SCHEDULES = ("constant", "defer", "anneal")  # λ_t of the concept level: default_robust_config says each.
# The `input` example level's forms (docs/method.md §3): where ∇_x ℓ comes from, which way the image moves, which
# BatchNorm normalises the perturbed pass, in which BatchNorm mode the ascent passes craft it, how it is coupled to
# the concept level.
INPUT_GRADIENTS = ("ascent", "clean_pass")
INPUT_DIRECTIONS = ("gradient", "random")
INPUT_BATCH_NORMS = ("main", "auxiliary")
INPUT_CRAFT_MODES = ("train", "eval")
INPUT_COUPLINGS = ("none", "weights")
PRIORS = ("uniform", "empirical")
CONCEPT_COSTS = ("hierarchy",)  # Besides None (the 0/1 cost 1 - I) and the path of a .npy/.csv K x K matrix.
OPTIMIZER_NAMES = ("sgd", "adamw")
SCHEDULE_NAMES = ("cosine", "step", "constant")
PRECISION_NAMES = ("float32", "bfloat16")
MODEL_NAMES = ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101")
STEMS = ("small", "imagenet", "auto")
BATCH_NORM_VARIANCES = ("shifted_one_pass", "one_pass", "two_pass")
KNOWN_DATASETS = ("fashion_mnist", "digits", "cifar10", "cifar100", "imagenet2012")
KNOWN_SHIFTS = ("lowres2", "lowres4", "rotate30", "blur", "noise")
PROBE_L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # The linear probe's default L2 strengths (evaluate/probe.py).
SHIFT_MARKER = "_shift/"  # `<base>_shift/<shift>`: a base data set with one appearance shift.
SPLIT_PATTERN = re.compile(r"^(?P<split>\w+)(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")
HOLDOUT_SPLIT = "holdout"  # `dataset.test_split`: the training rows held out by `dataset.validation_fraction`.
OTHER_DATASET_TARGETS = ("digits", "cifar10")  # Comparison targets that are another data set, whole.
COMPARISON_TARGETS = ("held_out", *OTHER_DATASET_TARGETS, *(f"shift/{shift}" for shift in KNOWN_SHIFTS))
SELECTION_METRICS = ("probe", "recall_at_1")  # Validation measures the protocol's selection score may average.
# How the protocol scores an arm on validation data (hrrl_jax.experiments.selection.selection_score says each).
SELECTION_SCORES = ("levels", "levels_and_worst_concept")
# An entry of `compare.arms`: its name (also its run directory), robust method, family (the arms one selection
# chooses among; default: its method), `config.robust` and `config.optimizer` values, and the families whose
# selected arms' robust values it starts from (in order).
ARM_KEYS = ("name", "method", "family", "robust", "optimizer", "combine")
ARM_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")
ARM_FAMILY_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
REFERENCE_FAMILY = "erm"  # Its arms (method erm) set the source top-1 that bounds every selection.


def arm_family(arm: Any) -> str:
    """The family of a `compare.arms` entry: its `family`, else its method."""
    return arm.get("family", arm["method"])


def _unset() -> config_dict.FieldReference:
    """An optional value: None until set (see the module docstring for why it is not typed)."""
    return config_dict.placeholder(object)


def default_robust_config() -> ml_collections.ConfigDict:
    """Every `config.robust` key with its default (plain ERM)."""
    config = ml_collections.ConfigDict()
    config.method = "erm"  # erm | el | cl | hrrl | group_dro.
    config.divergence = "l2"  # Concept level: l2 | kl | wasserstein | none.
    config.lam = 1.0  # Concept-level penalty λ; smaller = more adversarial.
    # λ_t over the adversary's steps t, with T = lam_schedule_steps: constant (λ_t = lam) | defer (inf, i.e. p = q,
    # for t < T, then lam) | anneal (lam · T/t for 1 <= t < T, inf at t = 0, then lam). cl and hrrl; group_dro keeps
    # its own λ = 1/η.
    config.lam_schedule = "constant"
    config.lam_schedule_steps = 0  # T of `defer` and `anneal` (then a positive integer); unused by `constant`.
    config.floor = 0.0  # ρ in [0, 1): p = (1 - ρ) p* + ρ q keeps every concept >= ρ q_k (cl, hrrl, group_dro).
    config.prior = "uniform"  # uniform | empirical.
    config.cost = _unset()  # Concept ground cost for `wasserstein`: None (1 - I), "hierarchy", or a .npy/.csv file.
    config.temperature = 0.1  # τ_c of the entropic `wasserstein` response.
    config.example_level = "reweight"  # reweight (weights) | perturb (features) | input (images): docs/method.md §3.
    config.gamma = 1.0  # Wasserstein penalty multiplier γ of the example level.
    config.example_temperature = 1.0  # τ_e of `reweight`.
    config.radius = _unset()  # Set: find γ per class so the coupling moves exactly this much (reweight only).
    config.perturb_steps = 1  # Ascent steps of the `perturb` and `input` forms.
    # The `input` example level (docs/method.md §3; defaults: today's form, the loss at x' alone):
    config.input_beta = 1.0  # β in [0, 1]: per-example loss (1 - β) ℓ(x) + β ℓ(x'); 0 is ERM's, 1 the robust one.
    config.input_fraction = 1.0  # f in (0, 1]: the share of each batch that is perturbed (the rest stays clean).
    # ascent: perturb_steps extra passes craft x' | clean_pass: x' from ∇_x of the clean pass's own backward (one
    # step, no extra pass; needs input_beta < 1).
    config.input_gradient = "ascent"
    config.input_direction = "gradient"  # gradient | random: the control, same per-example ‖x' - x‖, random direction.
    config.input_batch_norm = "main"  # main | auxiliary: a second BatchNorm for the perturbed pass (AdvProp).
    config.input_craft_batch_norm = "train"  # train | eval: BatchNorm mode of the `ascent` passes that craft x'.
    config.input_gamma_by_concept = _unset()  # Set: γ_k, one value > 0 per concept (inf keeps a concept clean).
    config.input_coupling = "none"  # none | weights: craft against Σ w_i ℓ_i, example i's move scaled by w_i.
    config.input_defer_steps = 0  # Steps of x' = x before the example level starts.
    config.input_ramp_steps = 0  # Then 1/γ ramps linearly from 0 to its value over this many steps.
    config.step_offset = 0.0  # t0 of the adversary's step size 1 / (t + 1 + t0).
    config.constant_step = _unset()  # Set, in (0, 1]: constant adversary step instead of 1 / (t + 1 + t0).
    config.group_dro_eta = 0.01  # Group DRO's step size η (lam = 1 / η, cumulative losses).
    return config


def default_optimizer_config() -> ml_collections.ConfigDict:
    """All keys of `config.optimizer` with their defaults: SGD, Nesterov momentum 0.9, peak 0.1, cosine."""
    config = ml_collections.ConfigDict()
    config.name = "sgd"  # sgd | adamw.
    config.learning_rate = 0.1  # Peak learning rate (reached at the end of the warm-up).
    config.momentum = 0.9  # sgd only.
    config.nesterov = True  # sgd only.
    config.weight_decay = 5e-4  # Kernels only; coupled L2 for sgd, decoupled for adamw.
    config.b1 = 0.9  # adamw only.
    config.b2 = 0.999  # adamw only.
    config.eps = 1e-8  # adamw only.
    config.schedule = "cosine"  # cosine | step | constant.
    config.warmup_steps = 0  # Linear warm-up from 0 to learning_rate.
    config.warmup_epochs = _unset()  # Set: overrides warmup_steps.
    config.step_boundaries = (0.5, 0.75)  # step schedule: fractions of total_steps.
    config.step_decay = 0.1  # step schedule: factor applied at each boundary.
    config.grad_clip_norm = _unset()  # Set: clip by the global gradient norm; None: no clipping.
    return config


def default_compare_config() -> ml_collections.ConfigDict:
    """Every `config.compare` key (the comparison experiment of launch.py) with its default."""
    config = ml_collections.ConfigDict()
    config.methods = ROBUST_METHODS
    config.seeds = (0,)
    config.overrides = ml_collections.ConfigDict()  # method -> {config.robust key: value}.
    config.lambda_sweep = ()  # λ values for the sweep methods.
    config.sweep_methods = ()
    config.sweep_seeds = (0,)
    config.targets = ()  # Any of COMPARISON_TARGETS.
    config.probe_train_examples = 10_000
    # The linear probes' L2 strengths: each probe picks one on a validation split of its training features.
    config.probe_l2_grid = PROBE_L2_GRID
    config.write_report = True  # False: only train and evaluate runs (to share them over processes).
    config.notes = ""
    # The selection protocol (hrrl_jax/experiments/protocol.py) runs instead of the comparison above when `arms` is
    # set; methods, seeds, overrides and the λ sweep are then unused.
    # In order: {"name", "method", "family" (optional; default: the method), "robust": {...}, "optimizer": {...},
    # "combine": (families)}.
    config.arms = ()
    config.selection_seeds = (0,)  # Every arm is trained on these and scored on validation data only.
    config.confirmation_seeds = (1, 2, 3, 4, 5)  # Each family's selected arm, evaluated once on the test splits.
    # Arms (names in `arms`) confirmed too although the rule did not select them, reported as `<name> (post hoc)`
    # beside the selected arms: information outside the pre-registered verdict.
    config.post_hoc_arms = ()
    # A family without a selectable arm: False: not combined nor confirmed; True: its arm of the highest score stands
    # in for it (combined, confirmed as `<family>* (stand-in)`, outside the verdict).
    config.stand_in_unselectable = False
    config.selection_metric = "probe"  # SELECTION_METRICS: the validation measure the score averages.
    # SELECTION_SCORES: levels (the mean over levels of each level's mean selection_metric) |
    # levels_and_worst_concept (that of three equal terms: the two level means and the source-validation worst-concept
    # accuracy).
    config.selection_score = "levels"
    config.top1_tolerance = 0.01  # Selectable: source-validation top-1 >= the best ERM arm's minus this.
    config.tie_tolerance = 0.0005  # Scores this close to the best tie; the arm listed first wins.
    config.few_shot_targets = ("held_out", "digits")  # Targets (of `targets`) with few-shot probes.
    config.few_shot_shots = (1, 5, 10, 20)  # Shots per class of those probes.
    config.within_concept_shots = (5, 20)  # Shots of the tasks inside each concept of >= 2 classes; (): none.
    config.few_shot_draws = 20  # Support sets drawn per few-shot probe.
    config.draw_seed = 0  # Seeds the probes' example subsample and the draws: the same images for every run.
    return config


def default_config() -> ml_collections.ConfigDict:
    """Every key of a training run's config with its default; configs/base.py returns this."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.batch_size = 128  # Global batch, split over all devices of all hosts.
    # k: the global batch is a logical batch of k micro-batches, one forward and backward pass each, one optimizer and
    # adversary update (README, "Gradient accumulation"); batch_size must be a multiple of k × the device count.
    config.gradient_accumulation_steps = 1
    config.eval_batch_size = _unset()  # None: same as batch_size.
    config.total_steps = 1000
    config.num_epochs = _unset()  # Set: overrides total_steps (converted with the epoch size).
    config.log_every_steps = 50
    config.eval_every_steps = 0  # 0: evaluate at the end only.
    config.eval_every_epochs = _unset()  # Set: overrides eval_every_steps (DURATIONS).
    config.checkpoint_every_steps = 500  # A checkpoint is also saved at the end and on SIGTERM/SIGINT.
    config.checkpoint_every_epochs = _unset()  # Set: overrides checkpoint_every_steps.
    config.keep_checkpoints = 3
    config.precision = "float32"  # Compute dtype: float32 | bfloat16 (parameters and losses stay float32).
    # Set: a work directory (its latest checkpoint) or WORKDIR/checkpoints/STEP whose params and batch_stats start a
    # fresh run (README, "Robust fine-tuning"); the optimizer and the adversary start afresh.
    config.init_from = _unset()

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "fashion_mnist"  # KNOWN_DATASETS, or `<base>_shift/<shift>`.
    config.dataset.data_dir = _unset()  # None: the tfds default (~/tensorflow_datasets or $TFDS_DATA_DIR).
    config.dataset.prepare = False  # True: a data_dir that does not exist is created (and the data prepared there).
    config.dataset.train_split = "train"
    config.dataset.test_split = "test"  # Or HOLDOUT_SPLIT: evaluate on the validation rows held out of train_split.
    config.dataset.validation_fraction = 0.0  # Stratified share of each class of train_split held out of training.
    config.dataset.validation_seed = 0  # Seed of that holdout, apart from `seed`: every run holds out the same rows.
    config.dataset.image_size = _unset()  # None: native resolution.
    config.dataset.augment = True
    # Worker processes building input batches (0: a thread of each trainer process). ImageNet's JPEG decoding and
    # crops need about one per 580 images/s of the step (measured per core: README, "Data and the input pipeline");
    # in-memory data sets need none.
    config.dataset.num_workers = 0
    config.dataset.exclude_classes = ()  # Classes held out of training (relabelled contiguously).
    config.dataset.only_classes = ()

    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet18"
    config.model.width = 64
    config.model.stem = "auto"  # small | imagenet | auto (imagenet stem from 128 px up).
    config.model.batch_norm_variance = "shifted_one_pass"  # BATCH_NORM_VARIANCES: hrrl_jax/models/batch_norm.py.

    config.optimizer = default_optimizer_config()
    config.robust = default_robust_config()
    config.profile = ml_collections.ConfigDict()  # A jax.profiler trace (hrrl_jax/train/profiling.py).
    config.profile.start_step = _unset()  # None: no trace; S: trace the steps S+1 .. S+num_steps (process 0).
    config.profile.num_steps = 5
    return config


# Durations that may be given in epochs: `<epochs key>` (float, None when unset) overrides `<steps key>`, converted
# with the epoch size in one place (`durations_in_steps`), so a change of batch size leaves no stale step count.
DURATIONS = {
    "total_steps": "num_epochs",
    "eval_every_steps": "eval_every_epochs",
    "checkpoint_every_steps": "checkpoint_every_epochs",
    "optimizer.warmup_steps": "optimizer.warmup_epochs",
}


def durations_in_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> ml_collections.ConfigDict:
    """A copy of `config` whose step durations are those its epoch durations give (rounded up; at least 1 step
    where the epochs are positive); durations given in steps stay as they are."""
    resolved = ml_collections.ConfigDict(config.to_dict())
    for steps_key, epochs_key in DURATIONS.items():
        epochs = value_at(config, epochs_key)
        if epochs is not None:
            section, _, key = steps_key.rpartition(".")
            node = resolved[section] if section else resolved
            # Rounded first, so that float error (1.1 x 100 = 110.00000000000001) does not add a step.
            node[key] = max(1, math.ceil(round(epochs * steps_per_epoch, 6))) if epochs > 0 else 0
    return resolved


def value_at(config: ml_collections.ConfigDict, path: str) -> Any:
    for key in path.split("."):
        config = config[key]
    return config


def known_dataset_names() -> tuple[str, ...]:
    """Every `config.dataset.name`: the base data sets, then each with each shift."""
    shifted = [f"{base}{SHIFT_MARKER}{shift}" for base in KNOWN_DATASETS for shift in KNOWN_SHIFTS]
    return (*KNOWN_DATASETS, *shifted)
