"""The adapter for Ray's internals (orchestrator/run/ray_internals.py): what it relies on is still where it was, and
each function degrades to a safe answer when it is not. No Ray is started.

`test_the_ray_internals_the_adapter_relies_on_are_still_there` is meant to fail after a Ray upgrade that moves
them: adapt ray_internals.py (and this test) to the new places then.
"""

from __future__ import annotations

import builtins
import logging
import os
import pickle

import pytest

from orchestrator.run import ray_internals
from orchestrator.run.ray_internals import (live_gcs_addresses, private_ray_runtime_env, quiet_ray_train_reports,
                                            ray_address_file)
from orchestrator.run.ray_session import started_cluster_address


def test_the_ray_internals_the_adapter_relies_on_are_still_there(tmp_path, monkeypatch):
    # ray_address_file: the `ray start` address file's name and place.
    from ray._common.utils import get_ray_address_file

    assert get_ray_address_file(str(tmp_path)) == str(tmp_path / "ray_current_cluster")

    # live_gcs_addresses: the process-table scan and its per-process cache.
    from ray._private import services

    assert callable(services.find_gcs_addresses)
    assert callable(services.find_gcs_addresses.cache_clear)

    # quiet_ray_train_reports: Ray Train V2 reports through a logger named after this module's file.
    from ray.train.v2._internal.execution import context

    assert context.logger is logging.getLogger(context.__file__)

    # private_ray_runtime_env: Ray Train's PlacementGroupCleaner polls its controller through the state API without
    # an address, and Ray's address auto-detection takes RAY_ADDRESS before counting the machine's GCS processes.
    from ray.train.v2._internal.execution.controller import placement_group_cleaner
    from ray.util.state import api

    assert placement_group_cleaner.is_actor_alive is not None
    assert hasattr(api, "StateApiClient")
    monkeypatch.setenv("RAY_ADDRESS", "10.9.8.7:6379")
    assert services.canonicalize_bootstrap_address_or_die(None) == "10.9.8.7:6379"


def test_the_adapter_answers_for_real_on_the_installed_ray(tmp_path):
    assert ray_address_file(str(tmp_path)) == str(tmp_path / "ray_current_cluster")
    assert isinstance(live_gcs_addresses(), frozenset)
    hook = private_ray_runtime_env()["worker_process_setup_hook"]
    assert callable(hook)


@pytest.fixture
def block_imports(monkeypatch):
    """`block_imports("a.b", ...)`: importing those modules (or names from them) raises ImportError, as on a Ray
    that moved them."""
    real_import = builtins.__import__

    def block(*names: str) -> None:
        blocked = set(names)

        def guarded(name, globals=None, locals=None, fromlist=(), level=0):
            if level == 0 and (name in blocked or any(f"{name}.{item}" in blocked for item in fromlist or ())):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return real_import(name, globals, locals, fromlist, level)

        monkeypatch.setattr(builtins, "__import__", guarded)

    return block


def test_no_address_file_helper_means_no_address_file(tmp_path, block_imports):
    block_imports("ray._common.utils", "ray._private.utils")
    assert ray_address_file(str(tmp_path)) is None


def test_the_address_file_helper_is_also_found_where_older_rays_kept_it(tmp_path, block_imports):
    block_imports("ray._common.utils")
    assert ray_address_file(str(tmp_path)) == str(tmp_path / "ray_current_cluster")


def test_no_gcs_scan_means_no_live_gcs(block_imports):
    block_imports("ray._private.services")
    assert live_gcs_addresses() == frozenset()


def test_a_moved_gcs_scan_means_no_live_gcs(monkeypatch):
    from ray._private import services

    monkeypatch.delattr(services, "find_gcs_addresses")
    assert live_gcs_addresses() == frozenset()


def test_a_ray_start_cluster_is_not_joined_when_ray_cannot_tell_it_is_alive(tmp_path, monkeypatch):
    """Degraded, a run starts its own Ray rather than joining an address nobody vouches for."""
    (tmp_path / "ray_current_cluster").write_text("127.0.0.1:6379\n")
    monkeypatch.setattr("orchestrator.run.ray_session.live_gcs_addresses", lambda: frozenset({"127.0.0.1:6379"}))
    assert started_cluster_address(str(tmp_path)) == "127.0.0.1:6379"  # the check itself, with a live GCS
    monkeypatch.setattr("orchestrator.run.ray_session.live_gcs_addresses", live_gcs_addresses)
    from ray._private import services

    monkeypatch.delattr(services, "find_gcs_addresses")
    assert started_cluster_address(str(tmp_path)) is None


def test_quieting_ray_train_reports(monkeypatch):
    from ray.train.v2._internal.execution import context

    logger = logging.getLogger(context.__file__)
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    quiet_ray_train_reports()
    assert logger.level == logging.WARNING


def test_quieting_ray_train_reports_is_a_no_op_when_ray_train_moved(monkeypatch, block_imports):
    from ray.train.v2._internal.execution import context

    logger = logging.getLogger(context.__file__)
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    block_imports("ray.train.v2._internal.execution", "ray.train.v2._internal.execution.context")
    quiet_ray_train_reports()  # no exception
    assert logger.level == logging.NOTSET


class _Context:
    gcs_address = "10.1.2.3:6379"


def test_the_worker_setup_hook_exports_the_workers_own_cluster(monkeypatch):
    import ray

    # setenv before delenv: monkeypatch then restores the variable's absence after the test; a bare delenv of an
    # absent variable records nothing, and the hook's own assignment would outlive the test (every later Ray start
    # in the session would join that address).
    monkeypatch.setenv("RAY_ADDRESS", "restored-after-the-test")
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(ray, "get_runtime_context", lambda: _Context())
    private_ray_runtime_env()["worker_process_setup_hook"]()
    assert os.environ["RAY_ADDRESS"] == "10.1.2.3:6379"


def test_the_worker_setup_hook_never_raises(monkeypatch):
    """A setup hook that raises kills the worker process: without an address it leaves the environment alone."""
    import ray

    def no_context():
        raise RuntimeError("Ray is not initialized")

    monkeypatch.setenv("RAY_ADDRESS", "")
    monkeypatch.setattr(ray, "get_runtime_context", no_context)
    private_ray_runtime_env()["worker_process_setup_hook"]()
    assert os.environ["RAY_ADDRESS"] == ""


def test_the_worker_setup_hook_travels_by_value(block_imports, monkeypatch):
    """Ray pickles the hook into GCS; a worker must be able to load it without importing this project."""
    import ray
    from ray import cloudpickle

    data = cloudpickle.dumps(private_ray_runtime_env()["worker_process_setup_hook"])
    block_imports(ray_internals.__name__, "orchestrator", "orchestrator.run")
    hook = pickle.loads(data)
    # setenv before delenv: monkeypatch then restores the variable's absence after the test; a bare delenv of an
    # absent variable records nothing, and the hook's own assignment would outlive the test (every later Ray start
    # in the session would join that address).
    monkeypatch.setenv("RAY_ADDRESS", "restored-after-the-test")
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(ray, "get_runtime_context", lambda: _Context())
    hook()
    assert os.environ["RAY_ADDRESS"] == "10.1.2.3:6379"


def test_no_address_set_by_the_hook_outlives_its_tests():
    """Runs after the hook's tests (file order): the address they set must be gone with them."""
    assert os.environ.get("RAY_ADDRESS") != "10.1.2.3:6379"
