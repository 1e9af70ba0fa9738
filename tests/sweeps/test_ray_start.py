"""A local Ray start whose raylet misses Ray's fixed 30 s registration window (seen once on a fresh
CI machine) is tried once more; a second such failure is one line, not Ray's traceback. Ray itself
is stood in for by a recorder of the calls start_local_ray makes (no Ray process starts here: the
real start is exercised by tests/training/test_ray_profile.py, whose fixture uses this function)."""

from __future__ import annotations

import pytest

from subtune.errors import SubtuneError
from subtune.sweeps.ray_executor import start_local_ray

TIMEOUT = ("The current node timed out during startup. This could happen because some of the raylet failed "
           "to startup or the GCS has become overloaded.")


class RecordingRay:
    """init fails with the given exceptions in turn, then succeeds; every call is recorded."""

    def __init__(self, *failures: Exception):
        self.failures = list(failures)
        self.calls: list[tuple] = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        if self.failures:
            raise self.failures.pop(0)

    def shutdown(self):
        self.calls.append(("shutdown",))


def test_a_start_that_times_out_is_tried_once_more(caplog):
    ray = RecordingRay(Exception(TIMEOUT))
    start_local_ray(ray, num_cpus=2)
    assert [c[0] for c in ray.calls] == ["init", "shutdown", "init"]
    assert all(c[1] == {"address": "local", "num_cpus": 2} for c in ray.calls if c[0] == "init")
    assert "trying once more" in caplog.text


def test_two_timeouts_are_one_line():
    ray = RecordingRay(Exception(TIMEOUT), Exception(TIMEOUT))
    with pytest.raises(SubtuneError) as e:
        start_local_ray(ray)
    message = str(e.value)
    assert message.startswith("a local Ray instance did not start in 2 tries") and "\n" not in message
    assert "or run without --ray" in message
    assert [c[0] for c in ray.calls] == ["init", "shutdown", "init", "shutdown"]


def test_another_failure_is_not_retried():
    ray = RecordingRay(ValueError("bad argument"))
    with pytest.raises(ValueError, match="bad argument"):
        start_local_ray(ray)
    assert [c[0] for c in ray.calls] == ["init"]
