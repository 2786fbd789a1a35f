"""ERM on Fashion-MNIST with a ResNet-18 of width 32: the reference setting of docs/method.md §8.

    python launch.py --config configs/fashion_mnist_resnet18.py --workdir workdirs/fmnist_r18

Robust variants change one key, e.g. `--config.robust.method=hrrl --config.robust.lam=0.1`.
Cost: 10 epochs = 2,340 steps; on 2 CPU cores well over an hour, on one GPU a few minutes.
Result: docs/results/fashion_mnist/report.md has this setting's ERM (there trained without the held-out classes).
"""

from configs import base


def get_config():
    config = base.get_config()
    config.model.width = 32
    config.batch_size = 256
    config.num_epochs = 10.0
    config.log_every_steps = 50
    config.eval_every_epochs = 2.0
    config.checkpoint_every_epochs = 2.0
    return config
