#!/usr/bin/env bash
# The GPU checks in one go, on a machine without internet, results written under $OUT: the step-throughput
# benchmark (ResNet-50, 224 px, batch 256, bf16) with the default shifted one-pass BatchNorm variance for ERM,
# HRRL and the plain step, and ERM with the plain one-pass and the two-pass variances; then, with
# CHECKS="throughput comparison", the
# Fashion-MNIST comparison experiment.
# Needs: the wheels the image lacks in .whl/ (tensorflow-datasets and its dependencies, ml-collections,
# tensorboardX) and the Fashion-MNIST IDX files in .data/fashion-mnist/.
# BENCH_ARGS / COMPARE_ARGS add flags (e.g. a tiny budget for a dry run on CPU).
set -u
OUT="${OUT:-/tmp/gpu_checks_out}"
mkdir -p "$OUT"
WHEELS="${WHEELS-.whl}"
if [ -n "$WHEELS" ] && [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONUNBUFFERED=1
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  mkdir -p /usr/share/datasets && cp -r .data/fashion-mnist /usr/share/datasets/
fi
PY="${PYTHON:-python3}"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c "import jax; print(jax.__version__, jax.devices())") > "$OUT/device.txt" 2>&1

CHECKS="${CHECKS:-throughput}"
BENCH="$PY benchmarks/step_throughput.py --model resnet50 --image-size 224 --batch-size 256 --precision bfloat16"
if [[ " $CHECKS " == *" throughput "* ]]; then
  echo "== step throughput"
  date
  timeout "${BENCH_TIMEOUT:-210}" $BENCH --methods erm,hrrl,plain --batch-norm-variance shifted_one_pass \
    --json "$OUT/step_throughput_shifted_one_pass.json" ${BENCH_ARGS:-} 2>&1 | grep -v Warning
  for variance in one_pass two_pass; do
    timeout "${BENCH_TIMEOUT:-210}" $BENCH --methods erm --batch-norm-variance "$variance" \
      --json "$OUT/step_throughput_$variance.json" ${BENCH_ARGS:-} 2>&1 | grep -v Warning
  done
fi
if [[ " $CHECKS " != *" comparison "* ]]; then
  exit 0
fi

echo "== comparison"
WORKDIR=/tmp/compare
$PY -c "from hrrl_jax.data import load_split; load_split('fashion_mnist', 'train')" 2>&1 | tail -1
export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.12
COMPARE="$PY launch.py --config configs/compare_fashion_mnist.py --workdir $WORKDIR ${COMPARE_ARGS:-}"
for method in erm el cl hrrl group_dro; do
  timeout "${COMPARE_TIMEOUT:-420}" $COMPARE --config.compare.write_report=False "--config.compare.methods=('$method',)" \
    "--config.compare.sweep_methods=()" > "/tmp/compare_$method.log" 2>&1 &
done
# The sweep's other λ values (the main λ is the main runs, trained above), one process per method.
for method in cl hrrl; do
  timeout "${COMPARE_TIMEOUT:-420}" $COMPARE --config.compare.write_report=False "--config.compare.methods=()" \
    "--config.compare.sweep_methods=('$method',)" "--config.compare.lambda_sweep=(10.0, 1.0)" \
    > "/tmp/compare_sweep_$method.log" 2>&1 &
done
wait
date
tail -n 2 /tmp/compare_*.log
timeout "${REPORT_TIMEOUT:-120}" $COMPARE 2>&1 | tail -n 5
date
tar czf "$OUT/compare.tgz" -C "$WORKDIR" --exclude=checkpoints --exclude=tensorboard .
tar czf "$OUT/compare_logs.tgz" /tmp/compare_*.log 2>/dev/null
