"""Queues by device (service/routing.py): the spec's resources and priority, which queue a
job goes to, why a job waits, priorities on Redis, and `cloze worker --device`."""

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from jobspec import SpecError, parse_spec
from service import routing
from service.settings import Settings
from tests.stack import ROOT

SETTINGS = Settings(train_queue="train")


def test_resources_and_priority_default_and_refuse_what_cannot_run():
    spec = parse_spec({"dataset_id": "ds_x"}).stored_spec()
    assert spec["resources"] == {"device": "auto", "processes": 1, "strategy": "ddp"}
    assert spec["priority"] == 5
    finetune = parse_spec({"type": "finetune", "task": "text_classification",
                           "base_model_id": "m_x", "dataset_id": "ds_x",
                           "resources": {"device": "cuda"}, "priority": 9})
    assert (finetune.resources.device, finetune.priority) == ("cuda", 9)
    for patch, param, words in (({"resources": {"device": "tpu"}}, "resources.device", "cuda"),
                                ({"priority": 10}, "priority", "9"),
                                ({"priority": -1}, "priority", "0"),
                                ({"resources": {"processes": 3}},
                                 "hyperparameters.batch_size", "multiple of resources.processes"),
                                ({"resources": {"processes": 65}}, "resources.processes", "64"),
                                ({"resources": {"strategy": "fsdp"}}, "resources.strategy",
                                 "set resources.processes to 2 or more"),
                                ({"type": "finetune", "task": "text_classification",
                                  "base_model_id": "m_x", "resources": {"processes": 3}},
                                 "hyperparameters.batch_size", "multiple of resources.processes"),
                                ({"resources": {"gpus": 1}}, "resources.gpus", "")):
        with pytest.raises(SpecError) as caught:
            parse_spec({"dataset_id": "ds_x", **patch})
        assert caught.value.param == param and words in caught.value.message
    two = parse_spec({"dataset_id": "ds_x", "resources": {"processes": 2}})
    assert two.resources.processes == 2 and two.stored_spec()["resources"]["processes"] == 2


def test_queue_names_and_the_auto_rule():
    assert routing.device_queue(SETTINGS, "cpu") == "train.cpu"
    assert routing.device_queue(SETTINGS, "cuda") == "train.cuda"
    # CPU workers also drain the queue of releases before queues by device.
    assert routing.worker_queues(SETTINGS, "cpu") == ["train.cpu", "train"]
    assert routing.worker_queues(SETTINGS, "cuda") == ["train.cuda"]
    auto = {"resources": {"device": "auto"}}
    assert routing.device_of(auto, {}, SETTINGS) == "cpu"
    assert routing.device_of(auto, None, SETTINGS) == "cpu"
    assert routing.device_of(auto, {"train.cpu": 2, "train.cuda": 1}, SETTINGS) == "cuda"
    assert routing.device_of({}, {"train.cuda": 1}, SETTINGS) == "cuda"  # an old spec
    assert routing.device_of({"resources": {"device": "cpu"}}, {"train.cuda": 3},
                             SETTINGS) == "cpu"
    assert routing.device_of({"resources": {"device": "cuda"}}, {}, SETTINGS) == "cuda"


def test_waiting_reason_names_the_queue_nobody_serves():
    cuda = {"resources": {"device": "cuda"}}
    reason = routing.waiting_reason(cuda, {"train.cpu": 1, "train": 1}, SETTINGS)
    assert reason is not None and "no worker serves train.cuda" in reason
    assert "cloze worker --device cuda" in reason
    assert routing.waiting_reason(cuda, {"train.cuda": 1}, SETTINGS) is None
    assert routing.waiting_reason(cuda, None, SETTINGS) is None  # the broker cannot tell
    auto = {"resources": {"device": "auto"}}
    assert "train.cpu or train.cuda" in (routing.waiting_reason(auto, {}, SETTINGS) or "")
    assert routing.waiting_reason(auto, {"train.cuda": 1}, SETTINGS) is None


def test_priority_higher_first_on_the_broker_scale():
    # kombu's Redis transport pops priority 0 first.
    assert [routing.broker_priority({"priority": p}) for p in (9, 5, 0)] == [0, 4, 9]
    assert routing.broker_priority({}) == 4  # a spec from before priorities: the default


def _cloze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_a_cuda_worker_refuses_to_start_without_a_cuda_device():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    done = _cloze("worker", "--device", "cuda")
    assert done.returncode == 1
    assert "torch sees no CUDA device" in done.stderr and "--device cpu" in done.stderr


def test_worker_options_that_do_not_fit_the_device_are_refused():
    for args, words in ((["--device", "tpu"], "cpu or cuda"),
                        (["--device", "cpu", "--gpus", "2"], "--device cuda"),
                        (["--device", "cuda", "--concurrency", "2"], "--gpus"),
                        (["--device", "cpu", "--gpus-per-job", "2"], "uses no GPU"),
                        (["--device", "cuda", "--gpus", "3", "--gpus-per-job", "2"],
                         "multiple of --gpus-per-job")):
        done = _cloze("worker", *args)
        assert done.returncode == 2, done
        assert words in done.stderr, done.stderr


@pytest.fixture
def redis_settings(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """This process's settings on the test Redis, under a queue name of its own."""
    from service.queue import get_celery
    from service.settings import get_settings

    monkeypatch.setenv("CLOZE_BROKER_URL", redis_url)
    monkeypatch.setenv("CLOZE_TRAIN_QUEUE", f"prio-{uuid.uuid4().hex[:8]}")
    get_settings.cache_clear()
    get_celery.cache_clear()
    yield get_settings()
    get_settings.cache_clear()
    get_celery.cache_clear()


def test_higher_priority_jobs_are_taken_first_on_redis(redis_settings: Settings):
    """Sent in the order 1, 9, 5 (and one message on the old single queue, sent as a
    release before priorities did: no priority), taken by a consumer of a CPU worker's
    queues the way a worker takes them (BRPOP over every priority list): 9, 5, 1."""
    from kombu import Consumer, Queue
    from kombu.message import Message

    from service.queue import TRAIN_TASK, enqueue_training, get_celery

    app = get_celery()
    for job_id, priority in (("job_p1", 1), ("job_p9", 9), ("job_p5", 5)):
        enqueue_training(job_id, {"resources": {"device": "cpu"}, "priority": priority})
    enqueue_training("job_cuda", {"resources": {"device": "cuda"}, "priority": 9})
    app.send_task(TRAIN_TASK, kwargs={"job_id": "job_legacy"},
                  queue=routing.legacy_queue(redis_settings))
    taken: list[str] = []

    def take(body: list, message: Message) -> None:
        taken.append(body[1]["job_id"])  # Celery's message protocol 2: args, kwargs, embed
        message.ack()

    queues = [Queue(q) for q in routing.worker_queues(redis_settings, "cpu")]
    with app.connection_for_read() as conn:
        with Consumer(conn, queues=queues, callbacks=[take], prefetch_count=1,
                      accept=["json"]):
            for _ in range(10):
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    break
        # The cuda job is not a CPU worker's: it is still on train.cuda.
        with conn.channel() as channel:
            cuda = routing.device_queue(redis_settings, "cuda")
            assert channel.client.llen(cuda) == 1  # priority 9 -> list step 0: the bare name
            channel.client.delete(cuda)
    # The old queue's message has no priority (kombu: 0, the most urgent, as 9 becomes): at
    # one priority a worker's own queue comes before the old one (the order it names them).
    assert taken == ["job_p9", "job_legacy", "job_p5", "job_p1"]


def test_heartbeats_say_which_queues_have_workers_and_auto_follows_them(
        redis_settings: Settings, monkeypatch: pytest.MonkeyPatch):
    from service import queue

    monkeypatch.setattr(queue, "LIVE_QUEUES_TTL_S", 0.0)  # read the heartbeats every time
    cpu, cuda = (routing.device_queue(redis_settings, d) for d in ("cpu", "cuda"))
    queue.beat_worker("cloze-cpu-1@a", queues=routing.worker_queues(redis_settings, "cpu"))
    queue.beat_worker("cloze-cpu-2@b", queues=routing.worker_queues(redis_settings, "cpu"))
    # A worker of a release before queues by device wrote a bare timestamp.
    client = queue._redis_client(redis_settings)
    client.set(queue._worker_prefix(redis_settings) + "celery@old", "1700000000.0", px=60_000)
    try:
        assert queue.live_workers() == 3
        assert queue.live_queues() == {cpu: 2, redis_settings.train_queue: 2}
        queue.enqueue_training("job_auto_cpu", {"resources": {"device": "auto"}})
        assert client.llen(f"{cpu}:4") == 1  # priority 5 -> broker 4: its own list
        queue.beat_worker("cloze-cuda-3@c", queues=[cuda])
        assert queue.live_queues() == {cpu: 2, cuda: 1, redis_settings.train_queue: 2}
        queue.enqueue_training("job_auto_gpu", {"resources": {"device": "auto"}})
        assert client.llen(f"{cuda}:4") == 1
    finally:
        for name in ("cloze-cpu-1@a", "cloze-cpu-2@b", "cloze-cuda-3@c"):
            queue.beat_worker(name, alive=False)
        client.delete(queue._worker_prefix(redis_settings) + "celery@old", f"{cpu}:4",
                      f"{cuda}:4")


def test_each_pool_process_of_a_cuda_worker_sees_one_gpu(monkeypatch: pytest.MonkeyPatch):
    """`--gpus 2` on GPUs 3 and 5: pool process 0 trains on GPU 3, process 1 (and the one
    that replaces it after its job) on GPU 5; a cpu worker's processes see none."""
    import billiard.process

    from workers import celery_app

    class Process:
        def __init__(self, index: int) -> None:
            self.index = index

    monkeypatch.setenv(routing.GPU_IDS_ENV, "3,5")
    for index, gpu in ((0, "3"), (1, "5")):
        monkeypatch.setattr(billiard.process, "current_process", lambda i=index: Process(i))
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
        celery_app._pin_gpu()
        assert os.environ["CUDA_VISIBLE_DEVICES"] == gpu
    from service.cli import _worker_env

    assert _worker_env("cpu") == {"CUDA_VISIBLE_DEVICES": "", routing.GPU_IDS_ENV: ""}
    assert _worker_env("cuda", ["3", "5"]) == {routing.GPU_IDS_ENV: "3,5",
                                               routing.GPUS_PER_JOB_ENV: "1"}


def test_gpus_per_job_give_each_pool_process_a_group(monkeypatch: pytest.MonkeyPatch):
    """`--gpus 4 --gpus-per-job 2` on GPUs 0-3: pool process 0 sees GPUs 0 and 1 (a
    2-process job's ranks train there), process 1 sees 2 and 3."""
    import billiard.process

    from service.cli import _worker_env
    from workers import celery_app

    class Process:
        def __init__(self, index: int) -> None:
            self.index = index

    for name, value in _worker_env("cuda", ["0", "1", "2", "3"], gpus_per_job=2).items():
        monkeypatch.setenv(name, value)
    for index, gpus in ((0, "0,1"), (1, "2,3"), (2, "0,1")):
        monkeypatch.setattr(billiard.process, "current_process", lambda i=index: Process(i))
        celery_app._pin_gpu()
        assert os.environ["CUDA_VISIBLE_DEVICES"] == gpus
