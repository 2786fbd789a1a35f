"""End to end through launch.py: outputs, resume after SIGTERM, and clear errors for bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hrrl_jax.train.loop import train_and_evaluate
from tests.train.helpers import REPO_ROOT, tiny_config, tiny_flags


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
    assert process.returncode == 75, output[-3000:]  # EX_TEMPFAIL: preempted, resumable (a scheduler requeues).
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
        ("--config.no_such_key=1", "--config.no_such_key=1: config has no key 'no_such_key'. Known keys there:"),
        (
            "--config.model.wdith=4",
            "--config.model.wdith=4: config.model has no key 'wdith'; did you mean 'model.width'?",
        ),
        ("--config.robust.methd=erm", "config.robust has no key 'methd'; did you mean 'robust.method'?"),
        ("--config.total_steps=many", "total_steps=many: invalid literal"),
    ],
)
def test_bad_config_fails_naming_the_key_in_one_line(tmp_path, flag, message):
    result = launch(tmp_path, *tiny_flags(), flag, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr[-2000:]
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_missing_data_set_says_how_to_get_it(tmp_path):
    (tmp_path / "nodata").mkdir()
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


def one_line_error(result) -> str:
    """The one `error:` line a user mistake prints (asserted: no traceback, nothing else on stderr)."""
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_workdir_that_is_a_file_is_one_line_before_any_data(tmp_path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    result = launch(not_a_directory, *tiny_flags(), timeout=120)
    assert result.returncode == 1
    assert "is a file, not a directory" in one_line_error(result)
    under_a_file = launch(not_a_directory / "run", *tiny_flags(), timeout=120)
    assert under_a_file.returncode == 1 and "cannot be written" in one_line_error(under_a_file)


def test_a_read_only_workdir_is_one_line(tmp_path):
    mount = tmp_path / "read_only"
    mount.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        pytest.skip("mounting a read-only tmpfs needs root and CAP_SYS_ADMIN")
    try:
        result = launch(mount, *tiny_flags(), timeout=120)
        assert result.returncode == 1 and "Read-only file system" in one_line_error(result)
        below = launch(mount / "run", *tiny_flags(), timeout=120)
        assert below.returncode == 1 and "Read-only file system" in one_line_error(below)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_second_launch_into_a_busy_workdir_is_refused_naming_the_holder(tmp_path):
    flags = tiny_flags(total_steps=100000, log_every_steps=1, **{"optimizer.schedule": "constant"})
    command = [sys.executable, "launch.py", "--config", "configs/default.py", "--workdir", str(tmp_path), *flags]
    first = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (tmp_path / "metrics.jsonl").exists():
            time.sleep(0.5)
        holder = json.loads((tmp_path / "run.lock").read_text())
        assert holder["pid"] == first.pid
        config_before = (tmp_path / "config.json").read_bytes()
        second = launch(tmp_path, *tiny_flags(**{"optimizer.learning_rate": 0.1}), timeout=120)
        assert second.returncode == 1
        line = one_line_error(second)
        assert f"is in use by pid {first.pid} on host {holder['host']} (started {holder['started']})" in line
        assert (tmp_path / "config.json").read_bytes() == config_before
        assert first.poll() is None  # The first run goes on, untouched.
    finally:
        first.send_signal(signal.SIGTERM)
        output, _ = first.communicate(timeout=120)
    assert first.returncode == 75, output[-2000:]
    assert (tmp_path / "run.lock").read_text() == ""  # Released on exit.


def test_the_stale_lock_of_a_killed_run_is_taken_over_with_a_message(tmp_path):
    holder_script = (
        "import sys, time; from hrrl_jax.workdir import WorkDirLock\n"
        f"lock = WorkDirLock({str(tmp_path)!r}); lock.acquire(); print('locked', flush=True); time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", holder_script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    busy = launch(tmp_path, *tiny_flags(), timeout=120)
    assert busy.returncode == 1 and f"in use by pid {holder.pid}" in one_line_error(busy)
    holder.kill()  # kill -9: the lock file still names it, but the kernel released its flock.
    holder.wait()
    result = launch(tmp_path, *tiny_flags(total_steps=3), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Took over the stale lock {tmp_path / 'run.lock'} of pid {holder.pid}" in result.stdout


def test_sigint_during_start_up_is_one_line_and_the_preempted_exit_status(tmp_path):
    script = (
        "import os, runpy, signal, sys, hrrl_jax.train.loop as loop\n"
        "def build_run(config): os.kill(os.getpid(), signal.SIGINT); raise AssertionError('not interrupted')\n"
        "loop.build_run = build_run\n"
        f"sys.argv = ['launch.py', '--config', 'configs/default.py', '--workdir', {str(tmp_path)!r}]\n"
        "runpy.run_path('launch.py', run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 75
    assert result.stderr.strip() == (
        "SIGINT received during start-up: stopped before training; nothing was written by this launch. "
        "Rerun the same command to start or resume."
    )


def test_the_features_cli_errors_are_one_line(tmp_path):
    features = [sys.executable, "-m", "hrrl_jax.features", "--dataset", "digits", "--out", str(tmp_path / "f.npz")]
    missing = subprocess.run(
        [*features, "--workdir", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert missing.returncode == 1 and "is not a training work directory" in one_line_error(missing)
    train_and_evaluate(tiny_config(total_steps=2), str(tmp_path / "run"))  # In-process: the CLI is under test here.
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["model"]["width"] = 8
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    other_width = subprocess.run(
        [*features, "--workdir", str(tmp_path / "run")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert other_width.returncode == 1 and "with shape" in one_line_error(other_width)
