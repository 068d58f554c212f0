"""Every worker's ``/status`` and ``/metrics`` merged into the one the master serves.

With ``workers > 1`` each worker keeps its own peer state (nginx without ``zone``) and
serves its own admin documents on a private socket; the master's admin listener fetches
them and answers with one document for the whole gateway. This module owns the merge
rules (plain data in, plain data out, no I/O):

``/status``
  The ``gateway`` part is the master's (pid, start time, uptime, version, configuration)
  with ``connections``, ``tunnels`` and ``requests`` summed over the workers, and a
  ``workers`` list: one entry per worker process (slot, pid, state, start time,
  restarts, whether it answered, and its own three counters). Each upstream peer is
  merged by name across the workers: ``active``, ``requests``, ``failures``, ``fails``
  and ``max_conns`` are summed (each worker has its own ``max_conns``, as nginx
  without ``zone``), ``state`` is the most serious of the workers' (``down``,
  ``draining``, ``unhealthy``, ``failed``, ``up``, the order of ``Peer.state``),
  ``effective_weight`` the lowest, ``healthy`` true only when every worker says so,
  ``health_check`` a failed probe if any worker has one, ``last_error`` the most
  recent; ``workers`` lists each worker's view of the peer (state, active, requests,
  failures, effective weight). A group's queue sums ``size``, ``overflows`` and
  ``timeouts``.

``/metrics``
  Samples with the same name and labels are summed (counters, histogram buckets,
  ``_sum`` and ``_count``, and gauges of things in progress), except
  ``gateway_upstream_weight`` (the highest), ``gateway_upstream_effective_weight``
  (the lowest) and the process series ``gateway_info`` and
  ``gateway_start_time_seconds``, which are the master's. ``gateway_upstream_state``
  summed counts the workers that see the peer in each state (with one worker, 1 or 0
  as before). ``gateway_workers`` (running worker processes) and
  ``gateway_worker_restarts_total`` are added.
"""
from __future__ import annotations

from typing import Optional

from gateway.metrics import format_value

__all__ = ["merge_metrics", "merge_status", "STATE_ORDER"]

#: most serious first, as ``Peer.state`` decides
STATE_ORDER = ("down", "draining", "unhealthy", "failed", "up")

_PEER_SUMS = ("active", "requests", "failures", "fails", "max_conns")
_QUEUE_SUMS = ("size", "overflows", "timeouts")
_COUNTERS = ("connections", "tunnels", "requests")


# -- /status -------------------------------------------------------------------------


def merge_status(master: dict, workers: list[tuple[dict, Optional[dict]]]) -> dict:
    """The master's ``/status`` document.

    ``master`` is the master's ``ProcessInfo.snapshot``; ``workers`` holds, for each
    worker process, its supervisor entry (``slot``, ``pid``, ``state``, ``started``,
    ``restarts``) and its ``/status`` document, or None when it did not answer.
    """
    gateway = dict(master)
    for key in _COUNTERS:
        gateway[key] = 0
    listed = []
    upstreams: dict[str, dict] = {}
    for entry, document in workers:
        item = dict(entry)
        item["answered"] = document is not None
        if document is not None:
            counts = document.get("gateway", {})
            for key in _COUNTERS:
                item[key] = counts.get(key, 0)
                gateway[key] += item[key]
            for name, group in document.get("upstreams", {}).items():
                _merge_group(upstreams, name, group, entry["slot"])
        listed.append(item)
    gateway["workers"] = listed
    for group in upstreams.values():
        group["peers"] = list(group["peers"].values())
    return {"gateway": gateway, "upstreams": upstreams}


def _merge_group(upstreams: dict, name: str, group: dict, slot: int) -> None:
    merged = upstreams.get(name)
    if merged is None:
        merged = upstreams[name] = {
            "name": group.get("name", name), "balance": group.get("balance"),
            "queue": dict(group["queue"]) if group.get("queue") else None,
            "peers": {},
        }
    elif group.get("queue") and merged["queue"] is not None:
        for key in _QUEUE_SUMS:
            merged["queue"][key] = merged["queue"].get(key, 0) + group["queue"].get(key, 0)
    peers = merged["peers"]
    for peer in group.get("peers", ()):
        view = {"worker": slot, "state": peer["state"], "active": peer["active"],
                "requests": peer["requests"], "failures": peer["failures"],
                "effective_weight": peer["effective_weight"]}
        current = peers.get(peer["name"])
        if current is None:
            current = peers[peer["name"]] = dict(peer)
            current["workers"] = [view]
            continue
        current["workers"].append(view)
        for key in _PEER_SUMS:
            current[key] = (current.get(key) or 0) + (peer.get(key) or 0)
        if _rank(peer["state"]) < _rank(current["state"]):
            current["state"] = peer["state"]
        current["weight"] = max(current["weight"], peer["weight"])
        current["effective_weight"] = min(current["effective_weight"],
                                          peer["effective_weight"])
        current["healthy"] = current["healthy"] and peer["healthy"]
        probe = peer.get("health_check")
        if probe is not None and (current.get("health_check") is None
                                  or (not probe["passed"]
                                      and current["health_check"]["passed"])):
            current["health_check"] = probe
        error = peer.get("last_error")
        if error is not None and (current.get("last_error") is None
                                  or error["time"] > current["last_error"]["time"]):
            current["last_error"] = error


def _rank(state: str) -> int:
    return STATE_ORDER.index(state) if state in STATE_ORDER else len(STATE_ORDER)


# -- /metrics --------------------------------------------------------------------------


_MAX = {"gateway_upstream_weight"}
_MIN = {"gateway_upstream_effective_weight"}
_MASTERS = {"gateway_info", "gateway_start_time_seconds"}


class _Family:
    __slots__ = ("name", "header", "samples")

    def __init__(self, name: str):
        self.name = name
        self.header: list[str] = []
        #: sample key (``name{labels}``) → value, in first-seen order
        self.samples: dict[str, float] = {}


def merge_metrics(texts: list[str], master: str = "", workers: int = 0,
                  restarts: int = 0) -> str:
    """One exposition from the workers' ``texts`` (as :mod:`gateway.metrics` writes
    them). ``master`` is the master's own process series (``gateway_info`` and
    ``gateway_start_time_seconds``, in the same format); ``workers`` and ``restarts``
    become ``gateway_workers`` and ``gateway_worker_restarts_total``."""
    families: dict[str, _Family] = {}
    for family in _parse(master):
        families[family.name] = family
    for text in texts:
        for family in _parse(text):
            if family.name in _MASTERS:
                continue
            merged = families.get(family.name)
            if merged is None:
                families[family.name] = family
                continue
            combine = (max if family.name in _MAX else min if family.name in _MIN
                       else _add)
            for key, value in family.samples.items():
                old = merged.samples.get(key)
                merged.samples[key] = value if old is None else combine(old, value)
    lines = []
    for family in families.values():
        lines.extend(family.header)
        lines.extend(f"{key} {format_value(value)}" for key, value in family.samples.items())
    lines += [
        "# HELP gateway_workers Worker processes running now.",
        "# TYPE gateway_workers gauge",
        f"gateway_workers {workers}",
        "# HELP gateway_worker_restarts_total Worker processes started again after "
        "one exited unexpectedly.",
        "# TYPE gateway_worker_restarts_total counter",
        f"gateway_worker_restarts_total {restarts}",
    ]
    return "\n".join(lines) + "\n"


def _add(a, b):
    return a + b


def _parse(text: str) -> list[_Family]:
    """Families of an exposition written by :mod:`gateway.metrics`: ``# HELP`` and
    ``# TYPE`` lines, then ``name{labels} value`` samples (a value never holds a
    space, so it is what follows the last one)."""
    families: list[_Family] = []
    current: Optional[_Family] = None
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                if current is None or current.name != parts[2] or (
                        parts[1] == "HELP" and current.samples):
                    current = _Family(parts[2])
                    families.append(current)
                current.header.append(line)
            continue
        key, _, value = line.rpartition(" ")
        if current is None:
            current = _Family(key.partition("{")[0])
            families.append(current)
        current.samples[key] = _number(value)
    return families


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)
