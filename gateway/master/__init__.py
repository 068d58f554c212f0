"""``workers > 1``: a master process and the worker processes it supervises.

nginx's process model for the gateway: the master binds the listening sockets, starts
``workers`` processes (``0``: one per CPU core) that inherit them, each with its own
reactor, upstream state and pools (nginx without ``zone``), starts again a worker that
dies, forwards reload and stop, and serves the admin listener with every worker's
state aggregated. With ``workers = 1`` none of this runs: the gateway is one process.

- ``service.py``: :class:`MasterService`, the master's service tree and its signals;
- ``supervisor.py``: worker processes by slot, restart back-off, generations;
- ``sockets.py``: binding in the master, adopting in the worker;
- ``worker.py``: what the master tells a worker and the worker's wiring;
- ``admin.py`` and ``aggregate.py``: the master's admin listener and its merge rules.

See docs/operations.md ("Worker processes").
"""
from gateway.master.service import MasterService, read_config, worker_count

__all__ = ["MasterService", "read_config", "worker_count"]
