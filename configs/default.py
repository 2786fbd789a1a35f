"""The main job: HRRL on Fashion-MNIST with a narrow ResNet-18, 400 steps on 2 CPU cores.

    python launch.py --config configs/default.py --workdir workdirs/default

The project's method at HRRL*, the HRRL arm that protocol v3 selected on validation data
(docs/results/fashion_mnist_v3/report.md): the concept level `l2` with λ = 0.3, the empirical prior and a warm
start (`step_offset` 300); the example level `input`, one closed-form ascent step on the image with γ = 3, mixed
with the clean loss at β = 0.5 (each example's loss is 0.5 ℓ(x) + 0.5 ℓ(x')), the concept adversary fed the mixed
losses. Ends with a table of top-1 and per-concept test accuracy beside the adversary's final concept distribution,
and the weight ESS, printed and written to workdirs/default/results.json.
Cost: 400 steps of batch 128, each 3.0 x ERM's step on 2 CPU cores (BENCHMARKS.md). Measured 2026-12-07 (one
seed, full test split): 81.96 % top-1, worst concept (tops) 74.52 %, gap 13.28, ESS 0.538; ERM on the same budget
84.25 %, tops 69.67 %, gap 25.82; 10 min 15 s against ERM's 2 min 58 s, both while another job shared the cores.
The five-seed comparison on the protocol's split is in the v3 report.
"""

from configs import base


def get_config():
    config = base.get_config()
    config.model.width = 8
    config.total_steps = 400
    config.log_every_steps = 25
    config.checkpoint_every_steps = 200
    config.robust.method = "hrrl"
    config.robust.divergence = "l2"
    config.robust.lam = 0.3
    config.robust.prior = "empirical"
    config.robust.step_offset = 300.0
    config.robust.example_level = "input"
    config.robust.gamma = 3.0
    config.robust.input_beta = 0.5
    return config
