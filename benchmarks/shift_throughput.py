"""Times the appearance shifts on ImageNet's stored images, shifted all at once or a few images at a time.

    python benchmarks/shift_throughput.py [--batch-size 512 --calls 4 --json OUT.json]

A shifted evaluation split applies `hrrl_jax.data.apply_shift` to each batch of stored 256-px centre squares
(synthetic photographs of benchmarks/imagenet_fixture.py at ImageNet's sizes). `apply_shift` works through a batch
`_IMAGES_AT_A_TIME` images at a time; this script sets that to the whole batch and to its default and times
successive calls on one core, each setting in a fresh process (its first call pays the page faults of fresh
intermediates, as every call of a long pass may). Reports milliseconds per image: the first call and the median
of the others; the outputs of both settings are compared byte for byte.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

STORED_SIZE = 256


def stored_images(batch_size: int) -> np.ndarray:
    """uint8 [batch_size, 256, 256, 3]: the stored centre squares of synthetic ImageNet-sized photographs."""
    import imagenet_fixture
    from PIL import Image

    from hrrl_jax.data import pil_images

    photographs = imagenet_fixture._sample_photographs()
    photos = (imagenet_fixture.synthetic_photo("validation", index, photographs) for index in range(batch_size))
    return np.stack([pil_images.centre_square(Image.fromarray(photo), STORED_SIZE) for photo in photos])


def time_one_setting(shift: str, images_at_a_time: int, batch_size: int, calls: int) -> dict:
    """Times `calls` successive shifts of one batch in this process (run it in a fresh one)."""
    from hrrl_jax.data import shifts

    images = stored_images(batch_size)
    shifts._IMAGES_AT_A_TIME = images_at_a_time
    seconds, digest = [], None
    for _ in range(calls):
        start = time.perf_counter()
        out = shifts.apply_shift(images, shift, seed=0)
        seconds.append(time.perf_counter() - start)
        digest = hashlib.sha256(out.tobytes()).hexdigest()
    return {
        "shift": shift,
        "images_at_a_time": images_at_a_time,
        "first_call_ms_per_image": 1000 * seconds[0] / batch_size,
        "later_calls_ms_per_image": 1000 * statistics.median(seconds[1:]) / batch_size,
        "output_sha256": digest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--shifts", default="lowres2,lowres4,blur,rotate30,noise")
    parser.add_argument("--json", help="Where to write the rows.")
    parser.add_argument("--one", nargs=2, metavar=("SHIFT", "IMAGES_AT_A_TIME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(time_one_setting(args.one[0], int(args.one[1]), args.batch_size, args.calls)))
        return

    from hrrl_jax.data import shifts

    environment = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    rows = []
    for shift in args.shifts.split(","):
        for images_at_a_time in (args.batch_size, shifts._IMAGES_AT_A_TIME):
            command = [sys.executable, __file__, "--one", shift, str(images_at_a_time)]
            command += ["--batch-size", str(args.batch_size), "--calls", str(args.calls)]
            output = subprocess.run(command, env=environment, check=True, capture_output=True, text=True).stdout
            row = json.loads(output.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{shift:9s} {images_at_a_time:4d} at a time: first call {row['first_call_ms_per_image']:.2f} ms an "
                f"image, later calls {row['later_calls_ms_per_image']:.2f}",
                flush=True,
            )
        whole, chunked = rows[-2:]
        if whole["output_sha256"] != chunked["output_sha256"]:
            raise SystemExit(f"{shift}: the outputs differ between {args.batch_size} and a few images at a time.")
    record = {
        "date": datetime.date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": 1,
        "batch_size": args.batch_size,
        "stored_size": STORED_SIZE,
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w") as file:
            json.dump(record, file, indent=2)


if __name__ == "__main__":
    main()
