"""The trainer is fitted to the cluster before it starts (issue 13, item 5): two workers asking
for a CPU each on a 2-CPU machine used to hang forever, the readers left without a CPU."""

import logging

import pytest

from egecmp_ray.config import ConfigError, InputError, load_config
from egecmp_ray.train.resources import READER_CPUS, fit_train_cpus


def _train(**values):
    train = load_config(preset="tiny").train
    for key, value in values.items():
        setattr(train, key, value)
    return train


def test_a_request_that_fits_is_kept():
    assert fit_train_cpus(_train(workers=1, cpus_per_worker=1.0), False, {"CPU": 2}, True) == 1.0


def test_two_workers_on_two_cpus_are_fitted_locally_and_say_so(caplog):
    with caplog.at_level(logging.WARNING):
        cpus = fit_train_cpus(_train(workers=2, cpus_per_worker=1.0), False, {"CPU": 2}, True)
    assert cpus == 0.5 and 2 * cpus + READER_CPUS <= 2
    assert "each worker gets 0.5 CPUs instead" in caplog.text


def test_a_remote_cluster_that_cannot_fit_fails_fast_naming_the_keys():
    with pytest.raises(InputError, match="train.workers=4 x train.cpus_per_worker=1 = 4 CPUs"):
        fit_train_cpus(_train(workers=4, cpus_per_worker=1.0), False, {"CPU": 4}, False)
    with pytest.raises(InputError, match="2 GPU workers, but the cluster has 1 GPUs"):
        fit_train_cpus(_train(workers=2), True, {"CPU": 16, "GPU": 1}, False)
    with pytest.raises(InputError, match="readers need 1 free"):  # one CPU: nothing to share
        fit_train_cpus(_train(workers=1, cpus_per_worker=1.0), False, {"CPU": 1}, True)


@pytest.mark.slow
def test_two_workers_a_cpu_each_train_on_the_two_cpu_session(prepared, tmp_path):
    """The user's exact case end to end: --workers 2 at 1 CPU a worker on 2 CPUs finishes;
    the workers run at the configured nice value (Ray's own default is 15)."""
    from egecmp_ray.train.pretrain import run_pretrain

    tmp, cfg, _, _ = prepared
    cfg = load_config(preset="tiny", overrides=["train.workers=2", "train.cpus_per_worker=1.0",
                                                "train.max_steps=2", "train.worker_niceness=7"])
    s = run_pretrain(str(tmp / "prep"), str(tmp_path / "run"), cfg)
    assert s["final_step"] == 2 and s["workers"] == 2
    assert s["worker_nice"] == 7


def test_worker_niceness_is_checked():
    with pytest.raises(ConfigError, match="train.worker_niceness"):
        load_config(preset="tiny", overrides=["train.worker_niceness=-5"])
