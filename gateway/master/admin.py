"""The master's admin listener: every worker's state, aggregated, on ``[admin] listen``.

With ``workers > 1`` each worker serves its own admin documents on a private unix
socket (:mod:`gateway.master.worker`) and the master, which has no upstream state of
its own, binds the configured admin listener. Per request it asks the workers over
their sockets (bounded by ``timeout``; a worker that does not answer is listed as
such) and answers:

============================  ======================================================
``/``, ``/status``            the page and document of :mod:`gateway.admin`, from
                              the merged status (:func:`aggregate.merge_status`)
``/metrics``                  the merged exposition (:func:`aggregate.merge_metrics`)
``GET /api/…``                worker 0's answer (every worker holds the same settings)
``PATCH``/``POST /api/…``     sent to every running worker; their common answer, or
                              502 listing each worker's when they differ
``POST /api/reload``          the master's reload (it validates, then tells workers;
                              the answer is ``gateway.reload.ReloadResult``'s)
============================  ======================================================

The merge rules are :mod:`gateway.master.aggregate`'s; worker processes are the
supervisor's. The HTTP side is ``twisted.web``, as the workers' admin listener.
"""
from __future__ import annotations

import json
from typing import Callable, Optional

from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from gateway.admin.site import JSON_TYPE, METRICS_TYPE, PAGE_POLICY
from gateway.admin.status import status_json, status_page
from gateway.master.aggregate import merge_metrics, merge_status
from gateway.metrics import escape_label

__all__ = ["MasterAdmin", "MasterAdminResource", "MasterAdminSite", "WorkerClient"]

log = Logger()

READ = ("GET", "HEAD")


@implementer(IAgentEndpointFactory)
class _OneSocket:
    def __init__(self, reactor, path: str, timeout: float):
        self.reactor = reactor
        self.path = path
        self.timeout = timeout

    def endpointForURI(self, uri):
        return UNIXClientEndpoint(self.reactor, self.path, timeout=self.timeout)


@implementer(IBodyProducer)
class _Body:
    def __init__(self, data: bytes):
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class WorkerClient:
    """HTTP/1.1 requests to one worker's private admin socket."""

    def __init__(self, reactor, timeout: float = 2.0):
        self.reactor = reactor
        self.timeout = timeout

    def request(self, path: str, method: str, uri: str, body: Optional[bytes] = None,
                content_type: Optional[bytes] = None) -> defer.Deferred:
        """Fires with ``(status, body bytes)``; fails when the worker does not answer
        within the timeout."""
        agent = Agent.usingEndpointFactory(self.reactor,
                                           _OneSocket(self.reactor, path, self.timeout))
        headers = Headers()
        if content_type is not None:
            headers.addRawHeader(b"Content-Type", content_type)
        d = agent.request(method.encode("ascii"), b"http://worker" + uri.encode("utf-8"),
                          headers, _Body(body) if body is not None else None)

        def answered(response):
            return readBody(response).addCallback(lambda data: (response.code, data))

        d.addCallback(answered)
        d.addTimeout(self.timeout, self.reactor)
        return d


class MasterAdmin:
    """What the master's admin listener shows: asks the workers and merges."""

    def __init__(self, reactor, supervisor, process, reload: Callable,
                 client: Optional[WorkerClient] = None):
        self.reactor = reactor
        self.supervisor = supervisor
        self.process = process
        self.reload = reload
        self.client = client or WorkerClient(reactor)

    def _ask_all(self, uri: str, workers=None, method: str = "GET",
                 body: Optional[bytes] = None, content_type: Optional[bytes] = None):
        """Fires with ``[(worker, (status, body) or None)]`` for the live workers."""
        workers = self.supervisor.alive() if workers is None else workers
        asks = []
        for worker in workers:
            if worker.admin is None:
                asks.append(defer.succeed(None))
                continue
            d = self.client.request(worker.admin, method, uri, body, content_type)
            d.addErrback(lambda failure, pid=worker.pid: log.debug(
                "worker process {pid} did not answer: {failure.value}", pid=pid,
                failure=failure))
            asks.append(d)
        d = defer.gatherResults(asks)
        return d.addCallback(lambda answers: list(zip(workers, answers)))

    def status(self) -> defer.Deferred:
        """The merged ``/status`` document."""

        def merge(answers):
            entries = [(self.supervisor.describe(worker),
                        _json(answer) if answer is not None and answer[0] == 200 else None)
                       for worker, answer in answers]
            entries += [(item, None) for item in self.supervisor.waiting()]
            return merge_status(self.process.snapshot(self.reactor.seconds()), entries)

        return self._ask_all("/status").addCallback(merge)

    def metrics(self) -> defer.Deferred:
        """The merged ``/metrics`` text."""

        def merge(answers):
            texts = [answer[1].decode("utf-8") for _, answer in answers
                     if answer is not None and answer[0] == 200]
            return merge_metrics(texts, self._process_metrics(),
                                 workers=len(self.supervisor.workers),
                                 restarts=self.supervisor.restarts_total)

        return self._ask_all("/metrics").addCallback(merge)

    def _process_metrics(self) -> str:
        labels = (f'version="{escape_label(self.process.version)}",'
                  f'pid="{self.process.pid}"')
        return (
            "# HELP gateway_info Build and process information.\n"
            "# TYPE gateway_info gauge\n"
            f"gateway_info{{{labels}}} 1\n"
            "# HELP gateway_start_time_seconds When the process started, in seconds "
            "since the epoch.\n"
            "# TYPE gateway_start_time_seconds gauge\n"
            f"gateway_start_time_seconds {self.process.start_time!r}\n"
        )

    def api(self, method: str, uri: str, body: bytes, content_type: Optional[bytes]
            ) -> defer.Deferred:
        """Fires with ``(status, document)``: a read from the first worker, a change
        applied by every running worker."""
        current = [self.supervisor.workers[slot] for slot in sorted(self.supervisor.workers)]
        if not current:
            return defer.succeed((503, _error(503, "no worker process is running")))
        if method in READ:
            current = current[:1]

        def combine(answers):
            results = [(worker, answer) for worker, answer in answers]
            codes = {answer[0] if answer is not None else None for _, answer in results}
            if len(codes) == 1 and None not in codes:
                return results[0][1][0], _json(results[0][1])
            document = _error(502, "the worker processes answered differently")
            document["error"]["workers"] = [
                {"worker": worker.slot, "pid": worker.pid,
                 "status": answer[0] if answer is not None else None,
                 "answer": _json(answer)}
                for worker, answer in results]
            return 502, document

        return self._ask_all(uri, current, method,
                             body if method not in READ else None,
                             content_type).addCallback(combine)


def _json(answer) -> Optional[dict]:
    if answer is None:
        return None
    try:
        return json.loads(answer[1].decode("utf-8"))
    except ValueError:
        return None


def _error(status: int, text: str) -> dict:
    return {"error": {"status": status, "text": text}}


class MasterAdminResource(resource.Resource):
    """Every path of the master's admin listener."""

    isLeaf = True

    def __init__(self, admin: MasterAdmin):
        super().__init__()
        self.admin = admin

    def render(self, request):
        method = request.method.decode("ascii", "replace")
        path = [segment.decode("utf-8", "replace") for segment in request.postpath]
        if len(path) > 1 and path[-1] == "":
            path.pop()
        request.setHeader(b"Server", b"gateway")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        if path in ([""], ["status"], ["metrics"]):
            if method not in READ:
                return _send_json(request, 405, _error(405, f"method {method} not allowed "
                                                             "here"), allow=READ)
            if path == ["metrics"]:
                d = self.admin.metrics().addCallback(
                    lambda text: (200, METRICS_TYPE, text.encode("utf-8")))
            elif path == ["status"]:
                d = self.admin.status().addCallback(
                    lambda doc: (200, JSON_TYPE, status_json(doc)))
            else:
                request.setHeader(b"Content-Security-Policy", PAGE_POLICY)
                d = self.admin.status().addCallback(
                    lambda doc: (200, b"text/html; charset=utf-8", status_page(doc)))
        elif path == ["api", "reload"]:
            if method != "POST":
                return _send_json(request, 405, _error(405, f"method {method} not allowed "
                                                             "here"), allow=("POST",))
            result = self.admin.reload()
            return _send_json(request, result.status, result.document())
        elif path[:1] == ["api"]:
            body = request.content.read() if request.content is not None else b""
            d = self.admin.api(method, request.uri.decode("utf-8", "replace"), body,
                               request.getHeader(b"content-type"))
            d.addCallback(lambda answer: (answer[0], JSON_TYPE, _dumps(answer[1])))
        else:
            return _send_json(request, 404, _error(404, "not found: the admin listener "
                                                        "serves /, /status, /metrics and "
                                                        "/api/upstreams"))
        gone = []
        request.notifyFinish().addErrback(gone.append)

        def write(answer):
            if gone:
                return
            status, content_type, body = answer
            request.setResponseCode(status)
            request.setHeader(b"Content-Type", content_type)
            request.write(body)
            request.finish()

        def failed(failure):
            log.failure("admin request failed", failure)
            write((500, JSON_TYPE, _dumps(_error(500, "internal error"))))

        d.addCallback(write).addErrback(failed)
        return server.NOT_DONE_YET


def _dumps(document) -> bytes:
    return json.dumps(document, indent=1).encode("utf-8") + b"\n"


def _send_json(request, status: int, document, allow=None) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_TYPE)
    if allow:
        request.setHeader(b"Allow", ", ".join(allow).encode())
    return _dumps(document)


class MasterAdminSite(server.Site):
    """The master's admin listener factory; quiet, as the workers' ``AdminSite``."""

    noisy = False

    def __init__(self, admin: MasterAdmin, reactor):
        super().__init__(MasterAdminResource(admin), reactor=reactor)
        self.admin = admin

    def log(self, request) -> None:
        pass
