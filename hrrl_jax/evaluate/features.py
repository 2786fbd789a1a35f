"""Deep features of a trained run: load its final checkpoint and embed any split or a user's own images.

    python -m hrrl_jax.features --workdir W --dataset NAME --split SPLIT --out F.npz
    python -m hrrl_jax.features --workdir W --images IN.npz --out F.npz

W, IN.npz and F.npz may be local paths or object store URLs (gs://...), read and written through etils.epath.

Features are the input of the last linear layer (the z = g(x) of docs/method.md §1), computed in eval mode. A user's
`images` (uint8 N x H x W x C, any size, 1 or 3 channels, optional `labels`) are converted to the source's
channels, resized to its resolution and normalised with its statistics, exactly as the source data.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hrrl_jax.config_checks import config_from_json
from hrrl_jax.data import (
    ConceptHierarchy,
    DatasetInfo,
    InputPipeline,
    SplitData,
    describe_dataset,
    image_side,
    load_split,
    normalise_images,
)
from hrrl_jax.errors import DataError, UserError
from hrrl_jax.mesh import data_parallel_mesh
from hrrl_jax.models import configured_model
from hrrl_jax.workdir import Checkpointer, WorkDir, storage


@dataclasses.dataclass
class TrainedModel:
    """A run's config, source data description, model and final variables (params and BatchNorm stats)."""

    config: ml_collections.ConfigDict
    info: DatasetInfo
    model: Any
    variables: dict[str, Any]
    step: int


def load_trained_model(workdir: str) -> TrainedModel:
    """Rebuilds the model of the run in `workdir` from its config.json and latest checkpoint.

    The data set's description comes from its name (no image is read); the variables are restored through the
    run's own checkpoint code, into the model's shapes, replicated over all devices.
    """
    directory = WorkDir(workdir)
    config = config_from_json(directory.read_config_dict())
    step = directory.latest_checkpoint_step()
    if step is None:
        raise FileNotFoundError(
            f"No checkpoint in {directory.checkpoints}: train the run first (launch.py --workdir {directory.path})."
        )
    dataset = config.dataset
    source_info = describe_dataset(
        dataset.name, exclude_classes=tuple(dataset.exclude_classes), only_classes=tuple(dataset.only_classes)
    )
    model = configured_model(config, source_info.num_classes)
    side = image_side(config, source_info)
    images = jax.ShapeDtypeStruct((1, side, side, source_info.image_shape[2]), jnp.float32)
    abstract_variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    _, _, replicated = data_parallel_mesh()
    checkpointer = Checkpointer(directory.checkpoints, asynchronous=False)
    try:
        variables = checkpointer.restore_model_variables(step, dict(abstract_variables), replicated)
    finally:
        checkpointer.close()
    return TrainedModel(config=config, info=source_info, model=model, variables=variables, step=step)


def extract_features(
    trained: TrainedModel, split: SplitData, *, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32 [N, D]) and labels (int32 [N]) of every example of `split`, in order."""
    _, data_sharding, replicated = data_parallel_mesh()
    batch_size = -(-batch_size // jax.device_count()) * jax.device_count()
    pipeline = InputPipeline(
        split,
        global_batch_size=batch_size,
        seed=0,
        train=False,
        image_size=image_side(trained.config, trained.info),
        sharding=data_sharding,
        num_workers=trained.config.dataset.num_workers,
    )
    variables = jax.device_put(trained.variables, replicated)
    embed = _embedding_function(trained.model, tuple(split.info.mean), tuple(split.info.std), replicated)
    chunks = [np.asarray(embed(variables, batch["image"])) for batch in pipeline.eval_batches()]
    features = np.concatenate(chunks)[: len(split)] if chunks else np.zeros((0, 0), np.float32)
    return features.astype(np.float32), np.asarray(split.labels, np.int32)


@functools.cache
def _embedding_function(
    model: Any, mean: tuple[float, ...], std: tuple[float, ...], out_sharding: jax.sharding.Sharding
) -> Callable[[dict[str, Any], jax.Array], jax.Array]:
    """The jitted (variables, uint8 images) -> features of `model` under this normalisation, one per distinct
    argument set: every extraction with an equal model (flax modules compare by their fields) reuses its traces."""
    normalise = functools.partial(normalise_images, mean=mean, std=std)
    return jax.jit(functools.partial(_features, model, normalise), out_shardings=out_sharding)


def _features(
    model: Any, normalise: Callable[[jax.Array], jax.Array], variables: dict[str, Any], images: jax.Array
) -> jax.Array:
    return model.apply(variables, normalise(images), train=False)[1]


def split_from_images(trained: TrainedModel, images: np.ndarray, labels: np.ndarray | None) -> SplitData:
    """A user's uint8 images as a split with the source's channels and normalisation statistics."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(f"images must be uint8 [N, H, W] or [N, H, W, C]; got {images.dtype} {images.shape}.")
    if images.ndim == 3:
        images = images[..., None]
    channels = trained.info.image_shape[2]
    if images.shape[-1] == 1 and channels == 3:
        images = np.repeat(images, 3, axis=-1)
    elif images.shape[-1] == 3 and channels == 1:
        luminance = images.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
        images = np.clip(np.rint(luminance), 0, 255).astype(np.uint8)[..., None]
    elif images.shape[-1] != channels:
        raise DataError(f"images have {images.shape[-1]} channels; give 1 or 3 (the source has {channels}).")
    labels = np.zeros(len(images), np.int32) if labels is None else np.asarray(labels, np.int32)
    num_classes = int(labels.max(initial=0)) + 1
    info = DatasetInfo(
        name="user_images",
        num_classes=num_classes,
        image_shape=tuple(images.shape[1:]),
        hierarchy=ConceptHierarchy.identity([str(label) for label in range(num_classes)]),
        mean=trained.info.mean,
        std=trained.info.std,
    )
    return SplitData.from_arrays(info, images, labels)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hrrl_jax.features", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True, help="Work directory of a finished (or checkpointed) run.")
    parser.add_argument("--dataset", help="Any data set name load_split knows, e.g. fashion_mnist_shift/lowres4.")
    parser.add_argument("--split", default="test")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--images", help="An .npz with uint8 `images` (N x H x W [x C]) and optional `labels`.")
    parser.add_argument("--out", required=True, help="Output .npz with `features` (float32 N x d) and `labels`.")
    parser.add_argument("--batch_size", type=int, default=512)
    args = parser.parse_args(argv)
    if (args.dataset is None) == (args.images is None):
        parser.error("give exactly one of --dataset or --images")
    return args


def main(argv: list[str] | None = None) -> None:
    """The command line: a user's mistake (no or another checkpoint, a corrupt one, bad images) is one line, exit 1."""
    try:
        _extract(parse_args(argv))
    except (UserError, FileNotFoundError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(1)


def _extract(args: argparse.Namespace) -> None:
    trained = load_trained_model(args.workdir)
    if args.images:
        with storage.as_path(args.images).open("rb") as file:
            arrays = dict(np.load(io.BytesIO(file.read())))
        split = split_from_images(trained, arrays["images"], arrays.get("labels"))
    else:
        split = load_split(args.dataset, args.split, data_dir=args.data_dir)
    features, labels = extract_features(trained, split, batch_size=args.batch_size)
    buffer = io.BytesIO()
    np.savez(buffer, features=features, labels=labels)
    storage.write_bytes(storage.as_path(args.out), buffer.getvalue())
    print(f"Wrote {features.shape[0]} x {features.shape[1]} features of {split.info.name} to {args.out}.")
