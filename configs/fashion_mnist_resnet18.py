"""ERM on Fashion-MNIST with a ResNet-18 of width 32: METHOD.md's reference setting (10 epochs, batch 256).

    python launch.py --config configs/fashion_mnist_resnet18.py --workdir workdirs/fmnist_r18

Robust variants change one key, e.g. `--config.robust.method=hrrl --config.robust.lam=0.1`.
Cost: 2,350 steps; on 2 CPU cores well over an hour, on one GPU a few minutes.
"""

from configs import base


def get_config():
    config = base.get_config()
    config.model.width = 32
    config.batch_size = 256
    config.num_epochs = 10.0
    config.log_every_steps = 50
    config.eval_every_steps = 470
    config.checkpoint_every_steps = 470
    config.optimizer.learning_rate = 0.1
    config.optimizer.weight_decay = 5e-4
    return config
