"""The work directory's record of configurations: written once, kept on resume, every change logged."""

import json

from configs import base
from hrrl_jax.workdir import WorkDir
from hrrl_jax.workdir.layout import config_changes


def test_a_fresh_start_writes_the_config_and_the_first_history_entry(tmp_path):
    directory = WorkDir(tmp_path)
    assert directory.record_config(base.get_config(), step=0) == {}
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads(base.get_config().to_json_best_effort())
    assert [entry["step"] for entry in directory.config_history()] == [0]


def test_the_same_config_writes_nothing_and_a_changed_one_is_logged_with_its_step(tmp_path):
    directory = WorkDir(tmp_path)
    directory.record_config(base.get_config(), step=0)
    before = (tmp_path / "config_history.jsonl").read_bytes()
    assert directory.record_config(base.get_config(), step=40) == {}
    assert (tmp_path / "config_history.jsonl").read_bytes() == before

    changed_config = base.get_config()
    changed_config.total_steps = 900
    changed_config.optimizer.learning_rate = 0.05
    changed = directory.record_config(changed_config, step=40)
    assert changed == {"optimizer.learning_rate": [0.1, 0.05], "total_steps": [1000, 900]}
    history = directory.config_history()
    assert [entry["step"] for entry in history] == [0, 40]
    assert history[0]["config"]["total_steps"] == 1000 and history[1]["changed"] == changed
    assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 900


def test_a_config_json_of_an_older_version_becomes_the_first_entry_without_false_changes(tmp_path):
    old = json.loads(base.get_config().to_json_best_effort())
    old["eval_batch_size"], old["dataset"]["data_dir"], old["robust"]["radius"] = 0, "", 0.0  # Old "unset".
    old["model"]["batch_norm_variance"] = "shifted_one_pass"
    (tmp_path / "config.json").write_text(json.dumps(old))
    directory = WorkDir(tmp_path)
    assert directory.record_config(base.get_config(), step=12) == {}
    assert [entry["step"] for entry in directory.config_history()] == [0]
    assert json.loads((tmp_path / "config.json").read_text()) == old  # Unchanged: nothing to record.


def test_config_changes_lists_added_removed_and_changed_keys():
    old = {"a": 1, "b": {"c": 2, "d": 3}}
    new = {"a": 1, "b": {"c": 5}, "e": 4}
    assert config_changes(old, new) == {"b.c": [2, 5], "b.d": [3, None], "e": [None, 4]}


def test_checkpoint_steps_are_the_numbered_folders(tmp_path):
    directory = WorkDir(tmp_path)
    assert directory.latest_checkpoint_step() is None
    for name in ("10", "2", "tmp.orbax-checkpoint-tmp-3"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    assert directory.checkpoint_steps() == [2, 10]
    assert directory.latest_checkpoint_step() == 10
