"""The main job: ERM on Fashion-MNIST with a narrow ResNet-18, a few minutes on 2 CPU cores.

    python launch.py --config configs/default.py --workdir workdirs/default

Ends with a table of top-1 and per-concept test accuracy (tops, trousers & dresses, footwear, bags),
printed and written to workdirs/default/results.json.
"""

from configs import base


def get_config():
    config = base.get_config()
    config.model.width = 8
    config.batch_size = 128
    config.total_steps = 400
    config.log_every_steps = 25
    config.checkpoint_every_steps = 200
    config.optimizer.learning_rate = 0.1
    return config
