"""Which Ray a run uses: the one this process already holds, one the user named, a `ray start` cluster, or its own.

`ray.init(address="auto")` joins *any* Ray found on the machine, including another program's private one: two
`unlearn run` on one machine then share the first one's Ray, and the second dies with it when the first finishes.
So a run joins only a Ray that is meant to be shared:

1. the Ray this process is already connected to (a Tune trial, a notebook that called `ray.init`);
2. the address the user named: `ray.address` in the config (`unlearn run --address`), else `RAY_ADDRESS` when
   it is set and not empty;
3. the cluster of the last `ray start` on this machine: `ray start` (and only it; `ray.init` never does) writes its
   GCS address to `<ray temp dir>/ray_current_cluster` and `ray stop` removes it. The file is trusted only while a
   process on this machine still serves or talks to that GCS (a raylet carries `--gcs-address`), so a file left
   behind by a crashed `ray start` is not joined;

and otherwise starts a private Ray with `ray.init(address="local")`, which ignores `RAY_ADDRESS` and the address
file, so that nothing on the machine is picked up by accident. A private Ray ends with this process.

A private Ray's worker processes get `RAY_ADDRESS` set to their own cluster (a setup hook, see
`ray_internals.private_ray_runtime_env`): Ray's own helpers running there (Ray Train's PlacementGroupCleaner)
otherwise auto-detect "the" cluster and fail with "Found multiple active Ray instances" while another program's
private Ray runs on the machine. This process's own environment is left alone: `RAY_ADDRESS` set here after
`ray.init` never reaches the workers (they inherit the raylet's environment, fixed when it started), and it would
outlive `ray.shutdown()`, sending a later `connect_ray` in this process to a Ray that is gone. Ray's private modules
are used only through `ray_internals`.
"""

from __future__ import annotations

import os


from orchestrator.run.ray_internals import live_gcs_addresses, private_ray_runtime_env, ray_address_file
from orchestrator.observe.progress import Progress



def started_cluster_address(temp_dir: str | None = None) -> str | None:
    """The GCS address of a live `ray start` cluster this machine belongs to, or None.

    `temp_dir` is Ray's temporary folder (default /tmp/ray), where `ray start` leaves the address file.
    """
    path = ray_address_file(temp_dir)
    if path is None or not os.path.isfile(path):
        return None
    with open(path) as f:
        address = f.read().strip()
    if not address:
        return None
    return address if address in live_gcs_addresses() else None


def named_address(configured: str | None) -> str | None:
    """The address the user named: the config's (`--address`), else a non-empty `RAY_ADDRESS`."""
    return configured or os.environ.get("RAY_ADDRESS") or None


def private_dashboard_host(configured: str | None = None) -> str:
    """Where a private Ray's dashboard listens: the config's `ray.dashboard_host`, else RAY_UNLEARN_DASHBOARD_HOST,
    else 127.0.0.1 (only this machine: Ray's dashboard and Jobs API run any code they are sent, see the README
    on token authentication before exposing it)."""
    return configured or os.environ.get("RAY_UNLEARN_DASHBOARD_HOST") or "127.0.0.1"


def private_ray_cpus(address: str | None, num_cpus: int | None) -> int | None:
    """The CPUs of the private Ray that `connect_ray` would start now, or None when it would join one instead.

    Lets a run refuse more workers than a private Ray could hold before paying for Ray's start."""
    import ray

    if ray.is_initialized() or named_address(address) or started_cluster_address() is not None:
        return None
    return num_cpus or os.cpu_count() or 1


def connect_ray(address: str | None, num_cpus: int | None, progress: Progress = print,
                dashboard_host: str | None = None) -> str:
    """Connect this process to the Ray a run should use (see the module docstring); returns how, in words.

    `num_cpus` and `dashboard_host` apply only to a private Ray (a running cluster's are its own); its dashboard
    listens on 127.0.0.1 unless `dashboard_host` (`ray.dashboard_host`) or RAY_UNLEARN_DASHBOARD_HOST says otherwise.
    """
    import ray

    if ray.is_initialized():
        return "the Ray this process already holds"
    named = named_address(address)
    if named:
        ray.init(address=named, log_to_driver=True)
        how = f"the Ray cluster at {named}"
    elif (started := started_cluster_address()) is not None:
        ray.init(address=started, log_to_driver=True)
        how = f"the `ray start` cluster at {started}"
    else:
        # With the dashboard: its state API is what Ray Train's controller polls, and users watch runs there.
        # One machine, ours alone: no node of it can be preempted, so Ray Train's per-run PreemptionWatcher actor
        # (one more process started and torn down by every `fit`) has nothing to watch.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # Its workers are told their own cluster's address: Ray's helpers that auto-detect "the" cluster (Ray
        # Train's PlacementGroupCleaner) fail once another program's private Ray runs on this machine too.
        ray.init(address="local", num_cpus=num_cpus, log_to_driver=True, include_dashboard=True,
                 dashboard_host=private_dashboard_host(dashboard_host), runtime_env=private_ray_runtime_env())
        how = "a private local Ray"
    progress(f"using {how}")
    return how
