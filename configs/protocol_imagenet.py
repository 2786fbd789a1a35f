"""Protocol v2 on ImageNet (11 WordNet concepts): select each method's arm on validation data, confirm on 5 seeds.

    python launch.py --config configs/protocol_imagenet.py --workdir /shared/workdirs/protocol_imagenet

The protocol of configs/protocol_fashion_mnist.py (its arms, families, score and rule: hrrl_jax/experiments/protocol.py)
on ImageNet with the authors' 11 concepts. Pre-training leaves out one class of each concept (the last by label:
146, 268, 388, 397, 910, 914, 915, 916, 918, 921, 999) and a stratified 2 % of the other training images (about 25
per class, 25,000 in all: the source validation split). Targets: the 989 source classes under the 5 appearance
shifts (example level), the 11 held-out classes and CIFAR-10 (concept level); few-shot probes on the latter two, and
few-shot tasks inside each concept (56 to 129 classes each, its held-out class included). Needs `imagenet2012` and
`cifar10` prepared as array_record in `config.dataset.data_dir`.

Scale: ResNet-18 at 224 x 224 with the ImageNet stem, bf16, 20,000 steps of batch 1024 (about 16.5 epochs), SGD
Nesterov 0.4 cosine with a 1,000-step warm-up, weight decay 1e-4 (the ERM arms try 5e-4 and 1e-3: the arms are those
of the CPU scale). The arms' warm start and annealing span 15,000 steps, the deferral 5,000.
Cost: not measured (no ImageNet can be had offline). Estimate: 20 M training images per run; the JPEG input needs
about one worker process per 450 images/s (README, Data), so a 16-core host feeds one GPU about 6,000 images/s:
about 1 hour per run, plus a few minutes to embed the 0.6 M images of its target measurements (the shifts are
applied on the host as images are read). The 20 arms of selection take about 20 GPU-hours, the 25 confirmation runs
about 26: 2 days on one GPU, about 6 hours on 8 with hosts to match.
"""

import ml_collections

from configs import imagenet_resnet18
from configs.protocol_fashion_mnist import protocol_compare_config

# The last class (by label) of each of the 11 concepts, ascending.
HELD_OUT_CLASSES = (146, 268, 388, 397, 910, 914, 915, 916, 918, 921, 999)


def get_config() -> ml_collections.ConfigDict:
    config = imagenet_resnet18.get_config()
    config.dataset.exclude_classes = HELD_OUT_CLASSES
    config.dataset.validation_fraction = 0.02
    config.num_epochs = None
    config.total_steps = 20_000
    config.eval_every_epochs = None
    config.eval_every_steps = 0
    config.checkpoint_every_epochs = None
    config.checkpoint_every_steps = 2_000
    config.optimizer.warmup_epochs = None
    config.optimizer.warmup_steps = 1_000

    config.compare = protocol_compare_config(config.total_steps, other_dataset="cifar10", probe_train_examples=50_000)
    return config
