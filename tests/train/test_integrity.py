"""A run never loses, corrupts or silently replaces what it saved: checksummed checkpoints, signals until the last
byte, save failures at once, no duplicate metrics, refused schedule jumps (in-process, on the tiny digits run)."""

import hashlib
import json
import os
import signal
import subprocess

import numpy as np
import pytest

from hrrl_jax.errors import ConfigError, DataError
from hrrl_jax.evaluate.features import load_trained_model
from hrrl_jax.train import evaluation
from hrrl_jax.train import loop as loop_module
from hrrl_jax.train.loop import train_and_evaluate
from hrrl_jax.train.preemption import RunInterrupted
from hrrl_jax.workdir import Checkpointer, CheckpointError, CheckpointSaveError, WorkDir
from tests.train.helpers import assert_trees_equal, read_checkpoint_state, tiny_config


def file_hashes(directory) -> dict[str, str]:
    """sha256 of every file under `directory`, by relative path."""
    return {
        os.path.relpath(os.path.join(root, name), directory): hashlib.sha256(
            open(os.path.join(root, name), "rb").read()
        ).hexdigest()
        for root, _, names in os.walk(directory)
        for name in names
    }


def corrupt_largest_data_file(step_directory) -> str:
    """Overwrites the largest array data file with random bytes of the same size.

    The whole file, not a window of it: an OCDBT data file of one process also holds that process's B-tree nodes,
    which the merged root does not read (8 KiB of a 130 KiB file here), and where they lie varies with the async
    writes; a 4 KiB window once fell on unread bytes alone and the checkpoint, rightly, still verified.
    """
    data_files = [
        os.path.join(root, name)
        for root, _, names in os.walk(os.path.join(step_directory, "state"))
        for name in names
        if os.sep + "d" + os.sep in os.path.join(root, name)
    ]
    path = max(data_files, key=os.path.getsize)
    size = os.path.getsize(path)
    with open(path, "r+b") as file:
        file.write(np.random.default_rng(0).bytes(size))
    assert os.path.getsize(path) == size
    return path


def test_a_corrupt_checkpoint_is_never_used_and_the_run_falls_back_to_the_newest_intact_one(tmp_path, capsys):
    config = tiny_config(total_steps=6, checkpoint_every_steps=2, log_every_steps=1, robust__method="hrrl")
    straight, damaged = tmp_path / "straight", tmp_path / "damaged"
    train_and_evaluate(config, str(straight))
    train_and_evaluate(config, str(damaged), stop_at_step=4)
    assert WorkDir(damaged).checkpoint_steps() == [2, 4]
    corrupt_largest_data_file(damaged / "checkpoints" / "4")
    corrupted_bytes = file_hashes(damaged / "checkpoints" / "4")
    capsys.readouterr()

    results = train_and_evaluate(config, str(damaged))

    output = capsys.readouterr().out
    rejected = [line for line in output.splitlines() if "step 4" in line and "not used" in line]
    assert len(rejected) == 1 and "digest.process_0.json" in rejected[0] or "cannot be read" in rejected[0]
    assert "Falling back to the intact checkpoint at step 2" in output
    assert "Resuming from the checkpoint at step 2" in output
    # The damaged bytes are kept, out of the way; the run retrained steps 3-6 exactly as the straight run.
    assert file_hashes(damaged / "corrupt_checkpoints" / "4") == corrupted_bytes
    assert_trees_equal(read_checkpoint_state(str(straight), 6), read_checkpoint_state(str(damaged), 6))
    assert results["status"] == "finished" and results["step"] == 6
    steps = [record["step"] for record in WorkDir(damaged).read_metrics()]
    assert steps == [1, 2, 3, 4, 5, 6]  # Steps 3 and 4 were logged twice; the records of the first time are gone.


def test_without_an_intact_checkpoint_the_run_refuses_and_changes_nothing(tmp_path):
    config = tiny_config(total_steps=4)
    train_and_evaluate(config, str(tmp_path), stop_at_step=2)
    corrupt_largest_data_file(tmp_path / "checkpoints" / "2")
    before = file_hashes(tmp_path)
    with pytest.raises(CheckpointError, match=r"No checkpoint in .* verifies \(corrupt: steps 2\); nothing was moved"):
        train_and_evaluate(config, str(tmp_path))
    after = file_hashes(tmp_path)
    assert {k: v for k, v in after.items() if k != "run.lock"} == {k: v for k, v in before.items() if k != "run.lock"}
    with pytest.raises(CheckpointError, match="step 2 is corrupt|step 2 cannot be read"):
        load_trained_model(str(tmp_path))  # The features CLI verifies too.


def test_the_digest_covers_every_array_and_is_checked_per_process(tmp_path):
    config = tiny_config(total_steps=2)
    train_and_evaluate(config, str(tmp_path))
    record = json.loads((tmp_path / "checkpoints" / "2" / "digest.process_0.json").read_text())
    assert record["algorithm"] == "sha256" and len(record["digest"]) == 64
    # A digest of other values (one flipped bit of the state) is a refusal, not a silent restore.
    (tmp_path / "checkpoints" / "2" / "digest.process_0.json").write_text(
        json.dumps({"algorithm": "sha256", "digest": "0" * 64})
    )
    with pytest.raises(CheckpointError, match="does not match .*digest.process_0.json"):
        load_trained_model(str(tmp_path))


def test_a_signal_during_the_final_save_completes_it_and_the_rerun_only_evaluates(tmp_path, monkeypatch, capsys):
    config = tiny_config(total_steps=4, log_every_steps=2, robust__method="hrrl")
    straight = train_and_evaluate(config, str(tmp_path / "straight"))
    original_save = Checkpointer.save

    def save_then_signal(self, step, state, meta):
        original_save(self, step, state, meta)
        if step == 4:  # The final save is in flight: SIGTERM now.
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Checkpointer, "save", save_then_signal)
    workdir = tmp_path / "signalled"
    interrupted = train_and_evaluate(config, str(workdir))
    assert interrupted["interrupted"] and interrupted["step"] == 4
    assert "SIGTERM received during the final evaluation: saved a checkpoint at step 4" in capsys.readouterr().out
    assert json.loads((workdir / "results.json").read_text())["status"] == "interrupted"
    assert (workdir / "checkpoints" / "4" / "digest.process_0.json").exists()
    assert not [name for name in os.listdir(workdir / "checkpoints") if "tmp" in name]

    monkeypatch.setattr(Checkpointer, "save", original_save)
    rerun = train_and_evaluate(config, str(workdir))
    assert set(rerun) == set(straight)  # The weight ESS too, read from the metrics this run logged.
    assert rerun["status"] == "finished" and rerun["weight_ess"] == pytest.approx(straight["weight_ess"])
    assert rerun["test_accuracy"] == straight["test_accuracy"]


def test_a_signal_during_start_up_interrupts_before_anything_is_written(tmp_path, monkeypatch):
    def build_run_then_signal(config):
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the signal should have interrupted start-up")

    monkeypatch.setattr(loop_module, "build_run", build_run_then_signal)
    handler_before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a pytest-xdist worker.
    with pytest.raises(RunInterrupted, match="SIGINT received during start-up"):
        train_and_evaluate(tiny_config(total_steps=2), str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["run.lock"] and (tmp_path / "run.lock").read_text() == ""
    assert signal.getsignal(signal.SIGINT) is handler_before  # The handlers are put back.


def test_a_failed_background_save_stops_training_at_once_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root and CAP_SYS_ADMIN")
    try:
        original_save = Checkpointer.save

        def save_then_fill_the_disk(self, step, state, meta):
            original_save(self, step, state, meta)
            if step == 2:
                self.wait()
                try:  # Fill what the checkpoint at step 2 left (it may have left too little to create the file).
                    with open(mount / "filler", "wb") as filler:
                        while True:
                            filler.write(b"\0" * 65536)
                except OSError:
                    pass

        monkeypatch.setattr(Checkpointer, "save", save_then_fill_the_disk)
        config = tiny_config(total_steps=12, checkpoint_every_steps=2, log_every_steps=100)  # The save fails first.
        with pytest.raises(CheckpointSaveError) as raised:
            train_and_evaluate(config, str(mount / "run"))
        message = str(raised.value)
        assert "\n" not in message and "at step 4" in message and "No space left on device" in message
        assert "MiB per process" in message and "MiB are free" in message
        assert WorkDir(mount / "run").checkpoint_steps() == [2]
        leftover = [name for name in os.listdir(mount / "run" / "checkpoints") if "tmp" in name]
        assert not leftover, [os.path.join(r, n) for r, _, ns in os.walk(mount / "run" / "checkpoints") for n in ns]
        assert read_checkpoint_state(str(mount / "run"), 2)["step"] == 2
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_total_steps_below_the_saved_step_or_stretching_the_schedule_is_refused(tmp_path):
    train_and_evaluate(tiny_config(total_steps=4), str(tmp_path))
    before = file_hashes(tmp_path)
    with pytest.raises(ConfigError, match=r"config.total_steps=2: below step 4"):
        train_and_evaluate(tiny_config(total_steps=2), str(tmp_path))
    with pytest.raises(ConfigError, match=r"config.total_steps=8: .*'cosine'.* would jump from 0 to 0.025"):
        train_and_evaluate(tiny_config(total_steps=8), str(tmp_path))
    assert {k: v for k, v in file_hashes(tmp_path).items() if k != "run.lock"} == {
        k: v for k, v in before.items() if k != "run.lock"
    }


def test_a_constant_schedule_may_be_extended_and_keeps_the_earlier_results(tmp_path):
    config = tiny_config(total_steps=4, optimizer__schedule="constant")
    first = train_and_evaluate(config, str(tmp_path))
    longer = train_and_evaluate(tiny_config(total_steps=6, optimizer__schedule="constant"), str(tmp_path))
    assert longer["step"] == 6
    assert json.loads((tmp_path / "results_step4.json").read_text())["test_accuracy"] == first["test_accuracy"]


def test_a_data_dir_that_does_not_exist_is_an_error_unless_prepare_is_set(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(DataError, match=r"config.dataset.data_dir=.*no_such_dir.*prepare=True"):
        train_and_evaluate(tiny_config(total_steps=2, dataset__data_dir=str(missing)), str(tmp_path / "run"))
    assert not missing.exists()
    train_and_evaluate(
        tiny_config(total_steps=2, dataset__data_dir=str(missing), dataset__prepare=True), str(tmp_path / "run")
    )


def test_a_concept_cost_of_the_wrong_shape_fails_before_any_data_is_read(tmp_path, monkeypatch):
    cost = tmp_path / "cost.npy"
    np.save(cost, np.ones((3, 3)))

    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the config was checked")

    monkeypatch.setattr(loop_module, "build_run", no_data)
    config = tiny_config(robust__method="cl", robust__divergence="wasserstein", robust__cost=str(cost))
    with pytest.raises(ConfigError, match=r"config.robust.cost=.*has shape \(3, 3\); the data set has 10 concepts"):
        train_and_evaluate(config, str(tmp_path / "run"))


def test_evaluation_stops_between_batches_when_asked():
    calls = []

    class Pipeline:
        def eval_batches(self):
            yield from range(3)

    def step(state, batch):
        calls.append(batch)
        return {}

    assert evaluation.evaluate(step, None, Pipeline(), None, should_stop=lambda: len(calls) == 1) is None
    assert calls == [0]


def test_a_resume_with_other_robust_settings_carries_the_adversary_over_and_says_so(tmp_path, capsys):
    train_and_evaluate(
        tiny_config(total_steps=4, log_every_steps=1, robust__method="hrrl"), str(tmp_path), stop_at_step=2
    )
    capsys.readouterr()
    train_and_evaluate(
        tiny_config(total_steps=4, log_every_steps=1, robust__method="hrrl", robust__lam=5.0), str(tmp_path)
    )
    output = capsys.readouterr().out
    assert "The adversary's settings changed since the checkpoint" in output and "lam saved 1" in output
    records = WorkDir(tmp_path).read_metrics()
    assert [record["step"] for record in records] == [1, 2, 3, 4]
    assert all(record["adversary_skipped_updates"] == 0 for record in records)  # The new settings were adopted.
