"""End to end through launch.py: outputs, resume after SIGTERM, and clear errors for bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.train.helpers import REPO_ROOT, tiny_flags


def launch(workdir, *flags, timeout=300):
    command = [sys.executable, "launch.py", "--config", "configs/default.py", "--workdir", str(workdir), *flags]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def read_jsonl(path):
    with open(path) as file:
        return [json.loads(line) for line in file]


def test_tiny_run_writes_outputs_and_learns(tmp_path):
    # 60 steps: the default's input-level loss, taken at the perturbed image, falls by a third only after ~40.
    result = launch(tmp_path, *tiny_flags(total_steps=60))
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.load(open(tmp_path / "config.json"))
    assert config["dataset"]["name"] == "digits" and config["total_steps"] == 60
    assert config["robust"]["method"] == "hrrl" and config["robust"]["example_level"] == "input"
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(3, 61, 3))
    for record in records:
        assert {"step", "loss", "accuracy", "learning_rate", "steps_per_second"} <= set(record)
    assert records[-1]["loss"] < 0.7 * records[0]["loss"]
    results = json.load(open(tmp_path / "results.json"))
    assert results["step"] == 60
    assert set(results["per_concept_accuracy"]) == {str(d) for d in range(10)}
    assert results["worst_concept_accuracy"] == min(results["per_concept_accuracy"].values())
    assert results["best_concept_accuracy"] == max(results["per_concept_accuracy"].values())
    assert 0.5 < results["test_accuracy"] <= 1.0
    assert any(name.startswith("events") for name in os.listdir(tmp_path / "tensorboard"))
    assert "Results:" in result.stdout


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_rerun_continues(tmp_path):
    flags = tiny_flags(total_steps=400, log_every_steps=1, **{"optimizer.schedule": "constant"})
    command = [sys.executable, "launch.py", "--config", "configs/default.py", "--workdir", str(tmp_path), *flags]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and len(read_jsonl(metrics)) >= 3):
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    saved = sorted(int(name) for name in os.listdir(tmp_path / "checkpoints") if name.isdigit())
    assert saved and 3 <= saved[-1] < 400, (saved, output[-2000:])
    assert f"saved a checkpoint at step {saved[-1]}" in output

    rerun = launch(tmp_path, *tiny_flags(total_steps=saved[-1] + 2, **{"optimizer.schedule": "constant"}))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Resuming from the checkpoint at step {saved[-1]}" in rerun.stdout
    assert json.load(open(tmp_path / "results.json"))["step"] == saved[-1] + 2


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.no_such_key=1", "no_such_key"),
        ("--config.model.wdith=4", "wdith"),
        ("--config.total_steps=many", "total_steps"),
    ],
)
def test_bad_config_fails_naming_the_key(tmp_path, flag, message):
    result = launch(tmp_path, *tiny_flags(), flag, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_missing_data_set_says_how_to_get_it(tmp_path):
    result = launch(
        tmp_path,
        *tiny_flags(),
        "--config.dataset.name=cifar10",
        f"--config.dataset.data_dir={tmp_path / 'nodata'}",
        timeout=120,
    )
    assert result.returncode == 1
    assert "error:" in result.stderr and "cifar10" in result.stderr
    assert "tfds" in result.stderr or "download" in result.stderr


@pytest.mark.parametrize(
    "flags, key",
    [
        (["--config.log_every_steps=0"], "config.log_every_steps"),
        (["--config.robust.method=nope"], "config.robust.method"),
        (["--config.num_epochs=None", "--config.checkpoint_every_steps=0"], "config.checkpoint_every_steps"),
    ],
)
def test_bad_value_fails_in_one_line_before_any_data_is_read(tmp_path, flags, key):
    data_dir, workdir = tmp_path / "data", tmp_path / "work"
    data_dir.mkdir()
    overrides = {"dataset.name": "fashion_mnist", "dataset.data_dir": data_dir}  # Reading would prepare it here.
    start = time.perf_counter()
    result = launch(workdir, *tiny_flags(**overrides), *flags, timeout=60)
    elapsed = time.perf_counter() - start
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"error: {key}=") and "Traceback" not in result.stderr
    assert os.listdir(data_dir) == [] and not (workdir / "config.json").exists()
    assert not (workdir / "checkpoints").exists()
    assert elapsed < 20, f"{elapsed:.1f} s: validation should come before jax and the data"


@pytest.mark.parametrize(
    "raised, exit_code, one_line",
    [("ValueError('an internal bug')", 1, False), ("hrrl_jax.errors.DataError('labels outside [0, 10)')", 1, True)],
)
def test_user_errors_are_one_line_and_internal_errors_keep_their_traceback(tmp_path, raised, exit_code, one_line):
    script = (
        "import runpy, sys, hrrl_jax.errors, hrrl_jax.train.loop as loop\n"
        f"def fail(config, workdir): raise {raised}\n"
        "loop.train_and_evaluate = fail\n"
        f"sys.argv = ['launch.py', '--config', 'configs/default.py', '--workdir', {str(tmp_path)!r}]\n"
        "runpy.run_path('launch.py', run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == exit_code
    if one_line:
        assert result.stderr.strip().splitlines()[-1] == "error: labels outside [0, 10)"
        assert "Traceback" not in result.stderr
    else:
        assert "Traceback" in result.stderr and "ValueError: an internal bug" in result.stderr
