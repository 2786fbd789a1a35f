"""ERM on ImageNet (11 WordNet concepts) with ResNet-18 at 224x224, bf16.

    python launch.py --config configs/imagenet_resnet18.py --workdir /shared/workdirs/imagenet_r18

Cost: 90 epochs of batch 1024 at about 3.6 GFLOPs per image forward: under half of ResNet-50's.
Result: not measured here (no ImageNet can be had offline).
"""

from configs import imagenet_resnet50


def get_config():
    config = imagenet_resnet50.get_config()
    config.model.name = "resnet18"
    return config
