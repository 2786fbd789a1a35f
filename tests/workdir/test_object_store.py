"""A work directory on an object store (`gs://`), offline: the same epath code path as a real bucket."""

import json
import os

import pytest

from hrrl_jax.workdir import ObjectStoreLock, WorkDir, WorkDirInUseError, metric_log, storage, workdir_lock
from tests.workdir.object_store import AppendRefused, fake_bucket


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    with fake_bucket(str(tmp_path), monkeypatch) as root:
        yield root


def test_the_fake_bucket_refuses_appends_as_a_real_one_does(bucket):
    path = storage.as_path("gs://b/x.txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a")
    with pytest.raises(AppendRefused):
        path.open("a")
    assert open(os.path.join(bucket, "b", "x.txt")).read() == "a"


def test_metrics_on_an_object_store_are_written_in_parts_and_read_back_in_order(bucket, monkeypatch):
    monkeypatch.setattr(metric_log, "RECORDS_PER_PART", 2)
    directory = WorkDir("gs://b/run")
    directory.prepare()
    log = metric_log.MetricLog(directory.root)
    for step in range(1, 6):
        log.append({"step": step, "loss": 1.0 / step})
    names = sorted(os.listdir(os.path.join(bucket, "b", "run")))
    assert names == [metric_log.part_filename("train", first) for first in (1, 3, 5)]
    assert [record["step"] for record in directory.read_metrics()] == [1, 2, 3, 4, 5]

    directory.truncate_metrics(after_step=3)  # A resume from step 3: parts after it removed, the straddling one cut.
    assert sorted(os.listdir(os.path.join(bucket, "b", "run"))) == [metric_log.part_filename("train", 1)] + [
        metric_log.part_filename("train", 3)
    ]
    resumed = metric_log.MetricLog(directory.root)
    resumed.append({"step": 4, "loss": 0.0})
    assert [record["step"] for record in directory.read_metrics()] == [1, 2, 3, 4]


def test_a_local_work_directory_keeps_one_appended_metrics_file(tmp_path):
    directory = WorkDir(tmp_path)
    log = metric_log.MetricLog(directory.root)
    for step in (1, 2):
        log.append({"step": step})
    assert os.listdir(tmp_path) == ["metrics.jsonl"]
    assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [1, 2]


def test_the_object_store_lock_refuses_a_live_holder_and_takes_over_a_stale_one(bucket):
    WorkDir("gs://b/run").prepare()
    reports = []
    first = workdir_lock("gs://b/run", settle_seconds=0.0, report=reports.append)
    assert isinstance(first, ObjectStoreLock)
    first.acquire()
    holder = json.loads(open(os.path.join(bucket, "b", "run", "run.lock")).read())
    assert holder["pid"] == os.getpid() and len(holder["token"]) == 32
    with pytest.raises(WorkDirInUseError, match=r"gs://b/run is in use by pid \d+ on host"):
        ObjectStoreLock("gs://b/run", settle_seconds=0.0).acquire()

    first._stop_heartbeat.set()  # The holder dies without releasing: its heartbeat stops.
    first._heartbeat.join()
    stale = ObjectStoreLock("gs://b/run", settle_seconds=0.0, stale_after_seconds=0.0, report=reports.append)
    stale.acquire()
    assert reports and reports[-1].startswith("Took over the stale lock gs://b/run/run.lock of pid")
    stale.release()
    assert not os.path.exists(os.path.join(bucket, "b", "run", "run.lock"))


def test_of_two_launches_that_both_found_no_holder_the_later_writer_keeps_the_lock(bucket, monkeypatch):
    WorkDir("gs://b/run").prepare()
    early = ObjectStoreLock("gs://b/run", settle_seconds=0.5)
    late = ObjectStoreLock("gs://b/run", settle_seconds=0.5)
    settles = []
    late_reads = [{}]  # The late launch looked before the early one wrote: it saw no holder either.
    real_read = late._read
    monkeypatch.setattr(late, "_read", lambda: late_reads.pop() if late_reads else real_read())

    def late_launch_writes_during_the_settle(seconds):
        settles.append(seconds)
        if len(settles) == 1:
            late.acquire()

    monkeypatch.setattr("hrrl_jax.workdir.lock.time.sleep", late_launch_writes_during_the_settle)
    with pytest.raises(WorkDirInUseError, match=r"gs://b/run is in use by pid \d+"):
        early.acquire()
    assert settles == [0.5, 0.5] and early._holder is None
    assert json.loads(open(os.path.join(bucket, "b", "run", "run.lock")).read())["token"] == late._holder["token"]
    late.release()
