"""Times the package's real jitted train step for each robust method, or the input pipeline alone.

    python benchmarks/step_throughput.py --model resnet50 --image-size 224 --batch-size 256 \
        --precision bfloat16 --methods erm,el,cl,hrrl --json OUT.json
    python benchmarks/step_throughput.py --mode input --batch-size 256
    python benchmarks/step_throughput.py --mode input --input-dataset imagenet2012 --data-dir DIR --input-workers 0,1,2
    python benchmarks/step_throughput.py --config configs/default.py --methods erm,config [--override KEY=VALUE ...]

Step mode builds each method with `hrrl_jax.train.run.build_trainer` (the function the trainer uses), feeds
one synthetic batch already on the devices, excludes compilation and warm-up, and reports the median over
several timed windows (each ended by `block_until_ready`). The method `plain` times the same network in a
minimal step (mean cross-entropy, SGD with Nesterov momentum, no metrics, no robust state): the floor
that the trainer's ERM step is held against on the same device. Input mode times the input pipeline's training and
evaluation transforms on the host with 0, 1, 2, ... worker processes (Fashion-MNIST, or `--input-dataset
imagenet2012 --data-dir DIR`, e.g. the JPEG fixture of benchmarks/imagenet_fixture.py, with the cost per image of
each stage), to tell whether input or compute bounds a run and how many workers a host needs.

With `--config FILE`, step mode times a config's own job: its model, batch, precision and data (one real training
batch of it), `erm` (the config with `robust.method=erm`) against `config` (its own robust settings), in
alternated windows (erm, config, erm, config, ...) so that drift of a shared machine hits both; the ratio is the
median of the per-pair ratios.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import functools
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # noqa: E402
from hrrl_jax import schema  # noqa: E402
from hrrl_jax.config_checks import validate_config  # noqa: E402
from hrrl_jax.data import DatasetInfo, InputPipeline, image_ops, load_split, loaders, pil_images, tfds_sources  # noqa: E402
from hrrl_jax.data.hierarchy import cifar100_hierarchy, fashion_mnist_hierarchy, imagenet_hierarchy  # noqa: E402
from hrrl_jax.models import BATCH_NORM_VARIANCES, count_flops, create_model  # noqa: E402
from hrrl_jax.train.run import build_run, build_trainer  # noqa: E402
from hrrl_jax.train.throughput import device_peak_flops  # noqa: E402  (the trainer's MFU uses the same table)

HIERARCHIES = {
    "imagenet2012": imagenet_hierarchy,
    "cifar100": cifar100_hierarchy,
    "fashion_mnist": fashion_mnist_hierarchy,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("step", "input"), default="step")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument(
        "--labels-like",
        choices=tuple(HIERARCHIES),
        default="imagenet2012",
        help="Classes and concept hierarchy of the synthetic labels.",
    )
    parser.add_argument("--batch-norm-variance", choices=BATCH_NORM_VARIANCES, default="shifted_one_pass")
    parser.add_argument(
        "--methods",
        default="erm,el,cl,hrrl",
        help="Any of erm, el, cl, hrrl, group_dro, plain; METHOD-LEVEL sets the example level: el-input, hrrl-perturb.",
    )
    parser.add_argument("--windows", type=int, default=5, help="Timed windows; the median is reported.")
    parser.add_argument("--steps-per-window", type=int, default=10)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--input-steps", type=int, default=100, help="Batches timed in input mode.")
    parser.add_argument("--input-workers", default="0", help="Input mode: worker-process counts to time, e.g. 0,1,2.")
    parser.add_argument(
        "--input-dataset",
        default="fashion_mnist",
        choices=("fashion_mnist", "imagenet2012"),
        help="Input mode's data: Fashion-MNIST, or a prepared imagenet2012 (benchmarks/imagenet_fixture.py).",
    )
    parser.add_argument("--data-dir", default=None, help="TFDS data directory of --input-dataset.")
    parser.add_argument(
        "--compile-only",
        action="store_true",
        help="Compile each step and report XLA's memory and bytes-accessed estimates without timing it.",
    )
    parser.add_argument("--json", default="", help="Also write the rows and the set-up to this JSON file.")
    parser.add_argument("--config", default="", help="Step mode: time this config's job (methods erm,config).")
    parser.add_argument(
        "--override", action="append", default=[], help="With --config: KEY=VALUE, e.g. robust.input_fraction=0.25."
    )
    return parser.parse_args(argv)


def load_config(path: str, overrides: list[str]) -> Any:
    """`get_config()` of the file at `path` with `KEY=VALUE` overrides (Python literals, else strings), validated."""
    spec = importlib.util.spec_from_file_location("benchmarked_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for override in overrides:
        key, _, text = override.partition("=")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        *sections, name = key.split(".")
        node = config
        for section in sections:
            node = node[section]
        node[name] = value
    validate_config(config)
    return config


def time_config_pairs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """`erm` and `config` rows for the job of `--config`, timed in alternated windows on one real batch."""
    config = load_config(args.config, args.override)
    erm_config = load_config(args.config, [*args.override, "robust.method='erm'"])
    run = build_run(config)
    batch = run.train_pipeline.global_batch(0)
    steps = {}
    for method, method_config in (("erm", erm_config), ("config", config)):
        trainer = (
            run.trainer
            if method == "config"
            else build_trainer(
                durations_in_steps_like(run, method_config),
                run.info,
                run.concept_sizes,
                total_steps=run.config.total_steps,
            )
        )
        compiled = trainer.jitted_train_step.lower(trainer.state, batch).compile()
        state = trainer.state
        for _ in range(args.warmup_steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        steps[method] = [compiled, state]
    windows: dict[str, list[float]] = {"erm": [], "config": []}
    for _ in range(args.windows):
        for method in ("erm", "config"):
            compiled, state = steps[method]
            start = time.perf_counter()
            for _ in range(args.steps_per_window):
                state, metrics = compiled(state, batch)
            jax.block_until_ready((state, metrics))
            windows[method].append((time.perf_counter() - start) / args.steps_per_window)
            steps[method][1] = state
    ratios = [robust_time / erm_time for erm_time, robust_time in zip(windows["erm"], windows["config"], strict=True)]
    rows = []
    for method in ("erm", "config"):
        step_seconds = statistics.median(windows[method])
        rows.append(
            {
                "method": method,
                "robust": (erm_config if method == "erm" else config).robust.to_dict(),
                "job": {
                    "dataset": config.dataset.name,
                    "model": config.model.to_dict(),
                    "image_shape": list(run.train_pipeline.output_shape),
                    "batch_size": config.batch_size,
                    "precision": config.precision,
                },
                "step_ms": 1000 * step_seconds,
                "step_ms_windows": [1000 * t for t in windows[method]],
                "ms_per_image": 1000 * step_seconds / config.batch_size,
                "images_per_second": config.batch_size / step_seconds,
                "ratio_to_erm": statistics.median(ratios) if method == "config" else 1.0,
                "pair_ratios": ratios if method == "config" else None,
                "device_kind": jax.devices()[0].device_kind,
            }
        )
    return rows


def durations_in_steps_like(run: Any, config: Any) -> Any:
    """`config` with its durations in steps, converted with the epoch size of `run`."""
    return schema.durations_in_steps(config, run.train_pipeline.steps_per_epoch)


def method_config(args: argparse.Namespace, method: str):
    """The base config with the benchmark's model, batch and method; HRRL = reweight + l2. `METHOD-LEVEL` (e.g.
    `el-input`) trains METHOD with the example level LEVEL instead of reweight."""
    method, _, example_level = method.partition("-")
    config = base.get_config()
    config.model.name, config.model.width, config.model.stem = args.model, args.width, "auto"
    config.model.batch_norm_variance = args.batch_norm_variance
    config.batch_size, config.precision = args.batch_size, args.precision
    config.dataset.image_size = args.image_size
    config.robust.method = method
    config.robust.divergence, config.robust.example_level = "l2", example_level or "reweight"
    return config


def synthetic_setup(args: argparse.Namespace) -> tuple[DatasetInfo, np.ndarray]:
    """DatasetInfo and per-concept example counts for labels like `--labels-like`, at the benchmark's size."""
    hierarchy = HIERARCHIES[args.labels_like]()
    channels = 1 if args.labels_like == "fashion_mnist" else 3
    info = DatasetInfo(
        name=f"synthetic_{args.labels_like}",
        num_classes=hierarchy.num_classes,
        image_shape=(args.image_size, args.image_size, channels),
        hierarchy=hierarchy,
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
    )
    concept_sizes = np.bincount(hierarchy.concept_of_class, minlength=hierarchy.num_concepts) * 1000
    return info, concept_sizes


def forward_flops_per_image(args: argparse.Namespace, info: DatasetInfo) -> float:
    """XLA's FLOP count of the model's forward pass per image (a train step costs about 3 times that)."""
    config = method_config(args, "erm")
    model = create_model(config.model.name, num_classes=info.num_classes, width=config.model.width, stem="auto")
    variables = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, *info.image_shape), np.float32), train=False)
    )
    return count_flops(model, variables, (1, *info.image_shape))


PlainCarry = tuple[dict[str, Any], Any]


def plain_step(
    carry: PlainCarry, batch: dict[str, jax.Array], *, model: Any, tx: optax.GradientTransformation
) -> tuple[PlainCarry, jax.Array]:
    """The network's minimal train step: mean cross-entropy and one optimizer update; returns the loss only."""
    variables, opt_state = carry

    def loss_fn(params: Any) -> tuple[jax.Array, Any]:
        (logits, _), updated = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, updated["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    updates, opt_state = tx.update(grads, opt_state, variables["params"])
    new_variables = {"params": optax.apply_updates(variables["params"], updates), "batch_stats": batch_stats}
    return (new_variables, opt_state), loss


def step_and_carry(method: str, trainer: Any) -> tuple[Callable[..., Any], Any]:
    """The jitted step timed for `method` (donating its carry) and the carry it starts from."""
    if method != "plain":
        return trainer.jitted_train_step, trainer.state
    tx = optax.sgd(0.1, momentum=0.9, nesterov=True)
    variables = {"params": trainer.state.params, "batch_stats": trainer.state.batch_stats}
    carry = (variables, jax.jit(tx.init)(variables["params"]))
    return jax.jit(functools.partial(plain_step, model=trainer.model, tx=tx), donate_argnums=0), carry


def time_step(
    args: argparse.Namespace, method: str, info: DatasetInfo, concept_sizes: np.ndarray, model_flops_per_step: float
) -> dict[str, Any]:
    """Median step time of one method's jitted step (compiled once, ahead of time) on a fixed batch.

    With `--compile-only`, only XLA's compiled memory and bytes-accessed estimates of the step.
    """
    config = method_config(args, "erm" if method == "plain" else method)
    trainer = build_trainer(config, info, concept_sizes, total_steps=10_000)
    rng = np.random.default_rng(0)
    batch = jax.device_put(
        {
            "image": rng.standard_normal((args.batch_size, *info.image_shape), dtype=np.float32),
            "label": rng.integers(0, info.num_classes, args.batch_size).astype(np.int32),
        },
        trainer.data_sharding,
    )
    jitted_step, state = step_and_carry(method, trainer)
    compiled_step = jitted_step.lower(state, batch).compile()
    memory = compiled_step.memory_analysis()
    cost = compiled_step.cost_analysis()
    cost = (cost[0] if isinstance(cost, list) else cost) or {}
    row = {
        "method": method,
        "compiled_temp_bytes": getattr(memory, "temp_size_in_bytes", None),
        "compiled_argument_bytes": getattr(memory, "argument_size_in_bytes", None),
        "compiled_bytes_accessed": cost.get("bytes accessed"),
        "device_kind": jax.devices()[0].device_kind,
    }
    if args.compile_only:
        return row
    for _ in range(args.warmup_steps):
        state, metrics = compiled_step(state, batch)
    jax.block_until_ready((state, metrics))
    window_times = []
    for _ in range(args.windows):
        start = time.perf_counter()
        for _ in range(args.steps_per_window):
            state, metrics = compiled_step(state, batch)
        jax.block_until_ready((state, metrics))
        window_times.append((time.perf_counter() - start) / args.steps_per_window)
    step_seconds = statistics.median(window_times)
    stats = jax.devices()[0].memory_stats() or {}
    peak = device_peak_flops(row["device_kind"]) if args.precision == "bfloat16" else None
    return {
        **row,
        "step_ms": 1000 * step_seconds,
        "step_ms_windows": [1000 * t for t in window_times],
        "images_per_second": args.batch_size / step_seconds,
        "model_tflops_per_step": model_flops_per_step / 1e12,
        "mfu": model_flops_per_step / step_seconds / (peak * jax.device_count()) if peak else None,
        "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
    }


def time_input(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Images/s of the input pipeline on the host: `host_batch` in this thread, then the training (`iterate`) and
    evaluation (`eval_batches`) transforms with each of `--input-workers` worker processes; for ImageNet also
    the cost per image of each stage of the transforms, in one thread."""
    split = load_split(args.input_dataset, "train", data_dir=args.data_dir)
    image_size = args.image_size if args.input_dataset == "imagenet2012" else None
    options = {"global_batch_size": args.batch_size, "seed": 0, "image_size": image_size, "prefetch": 1}
    pipeline = InputPipeline(split, **options, train=True)
    pipeline.host_batch(0)
    start = time.perf_counter()
    for step in range(1, args.input_steps + 1):
        pipeline.host_batch(step)
    direct = args.input_steps * args.batch_size / (time.perf_counter() - start)
    rows = [_input_row(args, "train: host_batch in this thread", direct)]
    for workers in (int(count) for count in args.input_workers.split(",")):
        skipped = 3 * max(workers, 1)  # At most this many batches are ready before timing starts.
        train = InputPipeline(split, **options, train=True, num_workers=workers)
        rows.append(_input_row(args, f"train: {workers} workers", _stream_rate(train.iterate(0), skipped, args)))
        enough = np.arange((skipped + args.input_steps) * args.batch_size) % len(split)  # Rows for a long pass.
        evaluation = InputPipeline(split.select(enough), **options, train=False, num_workers=workers)
        rows.append(
            _input_row(args, f"eval: {workers} workers", _stream_rate(evaluation.eval_batches(), skipped, args))
        )
    if args.input_dataset == "imagenet2012":
        rows += imagenet_stage_costs(args.data_dir, count=min(len(split), 4 * args.batch_size), size=args.image_size)
    return rows


def _input_row(args: argparse.Namespace, what: str, images_per_second: float) -> dict[str, Any]:
    return {
        "method": f"input {args.input_dataset} {what}",
        "images_per_second": images_per_second,
        "ms_per_image": 1000 / images_per_second,
        "device_kind": "host",
    }


def _stream_rate(batches: Iterator[dict[str, Any]], skipped: int, args: argparse.Namespace) -> float:
    """Images/s between the arrival of batch `skipped` and of `--input-steps` batches later: the steady rate,
    once the workers have started and what they had ready before the window is drained."""
    arrivals = []
    for _ in range(skipped + args.input_steps):
        next(batches)
        arrivals.append(time.perf_counter())
    batches.close()
    return args.input_steps * args.batch_size / (arrivals[-1] - arrivals[skipped - 1])


def imagenet_stage_costs(data_dir: str | None, *, count: int, size: int) -> list[dict[str, Any]]:
    """Milliseconds per image of each stage of the ImageNet transforms, one thread: reading a record (TFDS,
    decoding skipped), decoding its JPEG (Pillow), and the one-call crop + resize (+ flip) of training and
    evaluation."""
    source = tfds_sources.open_undecoded_source("imagenet2012", "train", data_dir)
    stored = loaders.IMAGENET_STORED_SIZE
    rng = np.random.default_rng(0)
    train_boxes, flips = image_ops.random_resized_crop_boxes(rng, count, stored), rng.random(count) < 0.5
    eval_box = image_ops.centre_crop_boxes(1, stored)[0]
    start = time.perf_counter()
    records = [source[index]["image"] for index in range(count)]
    read_ms = 1000 * (time.perf_counter() - start) / count
    start = time.perf_counter()
    originals = [pil_images.open_image(record) for record in records]
    decode_ms = 1000 * (time.perf_counter() - start) / count
    start = time.perf_counter()
    for original, box, flip in zip(originals, train_boxes, flips):
        pil_images.crop_of_centre_square(original, box, stored, size, flip=flip)
    train_ms = 1000 * (time.perf_counter() - start) / count
    start = time.perf_counter()
    for original in originals:
        pil_images.crop_of_centre_square(original, eval_box, stored, size)
    eval_ms = 1000 * (time.perf_counter() - start) / count
    stages = (
        ("read record", read_ms),
        ("decode JPEG", decode_ms),
        ("train: crop + resize + flip, one call", train_ms),
        ("eval: centre crop + resize, one call", eval_ms),
    )
    return [{"method": f"stage: {name}", "ms_per_image": value, "device_kind": "host"} for name, value in stages]


def format_table(rows: list[dict[str, Any]]) -> str:
    columns = (
        "method",
        "step_ms",
        "ms_per_image",
        "images_per_second",
        "ratio_to_erm",
        "mfu",
        "compiled_temp_bytes",
        "compiled_bytes_accessed",
        "peak_bytes_in_use",
    )
    lines = [" | ".join(columns), " | ".join("---" for _ in columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column)
            if value is None:
                cells.append("-")
            elif column in ("compiled_temp_bytes", "compiled_bytes_accessed", "peak_bytes_in_use"):
                cells.append(f"{value / 2**20:.1f} MiB")
            elif column in ("ratio_to_erm", "mfu", "ms_per_image", "step_ms"):
                cells.append(f"{value:.3f}")
            elif isinstance(value, float):
                cells.append(f"{value:,.1f}")
            else:
                cells.append(str(value))
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.mode == "input":
        rows = time_input(args)
    elif args.config:
        rows = time_config_pairs(args)
    else:
        info, concept_sizes = synthetic_setup(args)
        model_flops_per_step = 3 * args.batch_size * forward_flops_per_image(args, info)
        rows = [
            time_step(args, method, info, concept_sizes, model_flops_per_step) for method in args.methods.split(",")
        ]
        erm = next((row for row in rows if row["method"] == "erm" and "step_ms" in row), None)
        for row in rows:
            row["ratio_to_erm"] = row["step_ms"] / erm["step_ms"] if erm and "step_ms" in row else None
    # With --config the job's model, size, batch and precision are the config's (in each row), not these flags.
    ignored = ("model", "width", "image_size", "batch_size", "precision", "labels_like") if args.config else ()
    setup = {
        "args": {key: value for key, value in vars(args).items() if key not in ignored},
        "date": datetime.date.today().isoformat(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }
    print(f"{setup['device_count']} x {setup['device_kind']}, jax {setup['jax']}, {setup['args']}")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"setup": setup, "rows": rows}, file, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
