"""The one place that leans on Ray's internals: private modules, and behaviour of Ray's own helpers that no public
API states.

Ray moves its private modules between releases (`ray._private.utils.get_ray_address_file` became
`ray._common.utils.get_ray_address_file`, Ray Train V2 lives under `ray.train.v2._internal`), so nothing else in
the project imports them: each function here says which internals it relies on and why, and degrades to a safe
answer when they are gone (an ImportError or AttributeError is caught, never passed on). tests/orchestrator/
test_ray_internals.py fails on a Ray that moved them, so an upgrade shows what to adapt here.
"""

from __future__ import annotations

from typing import Any


def ray_address_file(temp_dir: str | None = None) -> str | None:
    """Where `ray start` writes its cluster's GCS address (`<ray temp dir>/ray_current_cluster`; `ray stop` removes
    it), or None when this Ray does not say.

    Relies on `ray._common.utils.get_ray_address_file` (older Rays: `ray._private.utils`, which still re-exports
    it): the only API that knows the file's name and Ray's default temp dir. Without it no `ray start` cluster is
    known, so a run starts a private Ray rather than joining one.
    """
    try:
        from ray._common.utils import get_ray_address_file
    except ImportError:
        try:
            from ray._private.utils import get_ray_address_file
        except ImportError:
            return None
    try:
        return get_ray_address_file(temp_dir)
    except (AttributeError, TypeError):  # a different signature or helper underneath
        return None


def live_gcs_addresses() -> frozenset[str]:
    """The GCS addresses this machine's Ray processes serve or talk to now (a raylet carries `--gcs-address`), or an
    empty set when this Ray cannot say.

    Relies on `ray._private.services.find_gcs_addresses` (it greps the process table) and its `cache_clear`: the
    answer is cached per process, and a run needs the live one. Empty means no cluster is trusted as alive, so a
    leftover address file is not joined.
    """
    try:
        from ray._private import services

        find = services.find_gcs_addresses
    except (ImportError, AttributeError):
        return frozenset()
    clear = getattr(find, "cache_clear", None)
    if clear is not None:
        clear()
    try:
        return frozenset(find())
    except (AttributeError, TypeError):
        return frozenset()


def quiet_ray_train_reports() -> None:
    """Keep only warnings from the logger Ray Train V2 logs every `report` call with (at INFO, out of reach of
    `LoggingConfig`); our own progress lines already say the same. For worker processes.

    Relies on `ray.train.v2._internal.execution.context`, whose logger is named after its own file
    (`logging.getLogger(__file__)`). When that module moves this is a no-op: Ray's lines stay, nothing breaks.
    """
    import logging

    try:
        from ray.train.v2._internal.execution import context

        name = context.__file__
    except (ImportError, AttributeError):
        return
    if name:
        logging.getLogger(name).setLevel(logging.WARNING)


def private_ray_runtime_env() -> dict[str, Any]:
    """The job runtime env a private Ray is started with (`ray.init(runtime_env=...)`): every worker process of it
    sets `RAY_ADDRESS` to its own cluster's GCS address before it runs anything.

    Why: Ray's helpers that find "the" cluster by auto-detection fail once two Ray instances run on one machine.
    Ray Train V2's `PlacementGroupCleaner` actor (and its `TrainStateActor`) poll the controller with
    `ray.util.state.get_actor(id)` without an address; `StateApiClient` then resolves it through
    `ray.dashboard.utils.get_address_for_submission_client` -> `ray._private.services.
    canonicalize_bootstrap_address_or_die(None)`, which reads `RAY_ADDRESS`, else the `ray start` address file,
    else counts the GCS processes on the machine and raises `ConnectionError: Found multiple active Ray instances`
    when there are two (another run's private Ray): the cleaner's monitor thread dies with that traceback.

    A worker inherits its environment from the raylet, started inside `ray.init`; setting `RAY_ADDRESS` in the
    driver afterwards never reaches it (and would make a later `connect_ray` in the same process join a Ray that
    was shut down), hence a setup hook, which runs in each worker process once it is connected. Relies only on
    public API (`worker_process_setup_hook`, `get_runtime_context().gcs_address`) and on the state API honouring
    `RAY_ADDRESS`; if the hook cannot find the address it leaves the environment as it is (a failing hook would
    kill the worker).
    """

    # Nested, so that Ray pickles it by value: a worker needs neither this module nor the driver's sys.path to run it.
    def export_own_ray_address() -> None:
        try:
            import os as os_
            import ray as ray_

            address = ray_.get_runtime_context().gcs_address
        except Exception:  # noqa: BLE001 - a setup hook that raises kills the worker process
            return
        if address:
            os_.environ["RAY_ADDRESS"] = address

    return {"worker_process_setup_hook": export_own_ray_address}


__all__ = ["live_gcs_addresses", "private_ray_runtime_env", "quiet_ray_train_reports", "ray_address_file"]
