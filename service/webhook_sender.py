"""The webhook sender: in each API process, a thread that claims due deliveries
(service/domain/webhooks.py) and a small pool of threads that POST them, signed.

Only API processes send. A worker's main process forks a child for every job, and a fork
in the middle of an HTTP attempt could hand the child a lock held forever (OpenSSL's, the
resolver's, an import's); guarding the fork with the attempt instead made every job start
and heartbeat wait for the slowest receiver. The API never forks.

Isolation: an attempt has a wall-clock limit (webhook_timeout_s: name lookup, connection,
request and the answer's head; the body is never read), so a receiver that drips bytes
holds a pool thread for that long at most; and the pool bounds the attempts in flight per
host and per owner, so one tenant's slow receivers never hold every thread.

Claims are conditional UPDATEs, so any number of senders may run and each attempt is
made by one of them. Delivery is at least once (a sender that dies after the POST and
before recording it is retried after its lease): receivers dedupe on X-Cloze-Delivery.
"""

import logging
import ssl
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import certifi
import httpcore
import httpx

from service.db import session_scope
from service.domain import webhooks
from service.domain.tables import utcnow
from service.domain.webhooks import Due, UnsafeTarget
from service.settings import Settings, get_settings

log = logging.getLogger("cloze.webhooks")
USER_AGENT = "Cloze-Webhooks/1"


def lease_s(settings: Settings) -> float:
    """How long a claim holds a delivery: an attempt ends by its wall-clock limit, then
    records its outcome; the rest is room for a slow database, so only a sender that died
    loses its claim."""
    return 2 * settings.webhook_timeout_s + 30


class _TimedOut(Exception):
    pass


def _left(deadline: float, timeout: float | None, error: type[Exception]) -> float:
    """What is left of the attempt's deadline for one socket operation (httpcore's own
    timeouts are per operation: a byte every 3 s kept one attempt alive for minutes)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the attempt's time is up")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self.stream, self.deadline = stream, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.stream.read(max_bytes, _left(self.deadline, timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.stream.write(buffer, _left(self.deadline, timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        # The handshake's own timeout is one deadline for all of it (CPython's _ssl).
        return _DeadlineStream(self.stream.start_tls(
            ssl_context, server_hostname, _left(self.deadline, timeout, httpcore.ConnectTimeout)),
            self.deadline)

    def get_extra_info(self, info: str) -> Any:
        return self.stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sockets, every operation cut to what is left of one deadline."""

    def __init__(self, deadline: float) -> None:
        self.backend, self.deadline = httpcore.SyncBackend(), deadline

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self.backend.connect_tcp(
            host, port, _left(self.deadline, timeout, httpcore.ConnectTimeout),
            local_address, socket_options), self.deadline)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        raise httpcore.UnsupportedProtocol("webhooks go over TCP")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@cache
def _tls() -> ssl.SSLContext:
    """One context for every attempt (loading the CA bundle costs more than a POST)."""
    return ssl.create_default_context(cafile=certifi.where())


def _resolve(host: str, port: int, deadline: float) -> list[str]:
    """webhooks.resolve within the deadline: getaddrinfo has no timeout, and a tenant's own
    DNS server can answer as slowly as the resolver allows (tens of seconds). A lookup
    that overruns is left to finish in its daemon thread."""
    found: list[list[str] | UnsafeTarget] = []

    def lookup() -> None:
        try:
            found.append(webhooks.resolve(host, port))
        except UnsafeTarget as exc:
            found.append(exc)

    thread = threading.Thread(target=lookup, name="cloze-webhook-dns", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if not found:
        raise _TimedOut
    if isinstance(found[0], UnsafeTarget):
        raise found[0]
    return found[0]


def post(due: Due, settings: Settings) -> tuple[int | None, str | None]:
    """One attempt, over by webhook_timeout_s whatever the receiver does: (the answer's
    status code or None, an error or None when delivered)."""
    deadline = time.monotonic() + settings.webhook_timeout_s
    timed_out = f"timed out after {settings.webhook_timeout_s:g} s"
    body = due.body.encode()
    try:
        host = webhooks.ascii_host(due.url)
        url = httpx.URL(due.url)  # the path and query, percent-encoded as they are sent
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = _resolve(host, port, deadline)
        # The policy the API accepted the webhook under; an explicit false here overrides.
        if not due.private_ok or settings.webhook_allow_private is False:
            webhooks.refuse_non_global(host, addresses)
    except UnsafeTarget as exc:
        return None, f"refused: {exc}"
    except (httpx.InvalidURL, ValueError) as exc:  # a bad port, say
        return None, f"refused: not a URL: {exc}"
    except _TimedOut:
        return None, timed_out
    timestamp = int(time.time())
    headers = [("Host", url.netloc.decode("ascii")), ("Content-Type", "application/json"),
               ("User-Agent", USER_AGENT), (webhooks.EVENT_HEADER, due.event),
               (webhooks.DELIVERY_HEADER, due.delivery_id),
               (webhooks.TIMESTAMP_HEADER, str(timestamp)),
               (webhooks.SIGNATURE_HEADER, webhooks.sign(due.secret, timestamp, body))]
    # Connect to an address just resolved (and checked), not to what a second lookup
    # answers (DNS rebinding); the name goes in Host and, for TLS, in SNI and the
    # certificate check. httpcore itself follows no redirects, reads no proxy from the
    # environment, and this pool keeps no connection for a next attempt. An address that
    # refuses the connection (localhost's ::1 where the receiver listens on 127.0.0.1)
    # gives way to the next, as a plain connect would.
    failed: Exception = httpcore.ConnectError("no address")
    for address in addresses:
        target = httpcore.URL(scheme=url.raw_scheme, host=address.encode(), port=port,
                              target=url.raw_path)
        try:
            with httpcore.ConnectionPool(ssl_context=_tls(), max_keepalive_connections=0,
                                         network_backend=_DeadlineBackend(deadline)) as pool, \
                    pool.stream("POST", target, headers=headers, content=body,
                                extensions={"sni_hostname": host}) as answer:
                status = answer.status  # the head is the answer; the body is not awaited
            break
        except httpcore.ConnectError as exc:
            failed = exc
        except httpcore.TimeoutException:
            return None, timed_out
        except (httpcore.NetworkError, httpcore.ProtocolError,
                httpcore.UnsupportedProtocol, OSError) as exc:
            return None, _describe(exc)
    else:
        return None, _describe(failed)
    if 300 <= status < 400:
        return status, f"HTTP {status}: redirects are not followed"
    if not 200 <= status < 300:
        return status, f"HTTP {status}"
    return status, None


def _describe(exc: Exception) -> str:
    return f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__


def attempt(due: Due, settings: Settings) -> None:
    """Make the claimed delivery's attempt and record how it went."""
    try:
        status_code, error = post(due, settings)
    except Exception as exc:  # a bug here still counts the attempt: no delivery loops
        log.exception("webhook %s attempt %d failed", due.delivery_id, due.attempt)
        status_code, error = None, f"internal error: {exc.__class__.__name__}"
    if error is not None:
        log.warning("webhook %s (%s) attempt %d: %s", due.delivery_id, due.event,
                    due.attempt, error)
    with session_scope() as session:
        webhooks.record_attempt(session, due, now=utcnow(), status_code=status_code,
                                error=error, settings=settings)


def deliver_next() -> bool:
    """Claim one due delivery and make its attempt here; False when none was due."""
    settings = get_settings()
    with session_scope() as session:
        due = webhooks.claim_next(session, now=utcnow(), lease_s=lease_s(settings))
    if due is None:
        return False
    attempt(due, settings)
    return True


class Sender:
    """Claims due deliveries while the pool has room and hands each to a pool thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool = ThreadPoolExecutor(settings.webhook_concurrency,
                                       thread_name_prefix="cloze-webhook")
        self.lock = threading.Lock()
        self.hosts: Counter[str] = Counter()  # attempts in flight, by destination
        self.owners: Counter[str] = Counter()
        self.wake = threading.Event()  # an attempt ended: its thread is free

    def fill(self) -> int:
        """Start attempts until the pool is full or nothing more may start; how many."""
        started, s = 0, self.settings
        while True:
            with self.lock:
                if self.hosts.total() >= s.webhook_concurrency:
                    return started
                busy_hosts = {h for h, n in self.hosts.items()
                              if n >= s.webhook_concurrency_per_host}
                busy_owners = {o for o, n in self.owners.items()
                               if n >= s.webhook_concurrency_per_owner}
            with session_scope() as session:
                due = webhooks.claim_next(session, now=utcnow(), lease_s=lease_s(s),
                                          busy_owners=busy_owners, busy_hosts=busy_hosts)
            if due is None:
                return started
            with self.lock:
                self.hosts[due.destination] += 1
                self.owners[due.owner] += 1
            self.pool.submit(self._attempt, due)
            started += 1

    def _attempt(self, due: Due) -> None:
        try:
            attempt(due, self.settings)
        except Exception as exc:  # a database outage: the lease runs out, then a retry
            log.warning("webhook %s: recording failed: %s", due.delivery_id,
                        exc.__class__.__name__)
        finally:
            with self.lock:
                for counter, key in ((self.hosts, due.destination), (self.owners, due.owner)):
                    counter[key] -= 1
                    if not counter[key]:
                        del counter[key]
            self.wake.set()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.fill()
            except Exception as exc:  # a database outage: try again next round
                log.warning("webhook round failed: %s", exc.__class__.__name__)
            self.wake.wait(self.settings.webhook_poll_interval_s)
            self.wake.clear()
        # The attempts in flight end by their limit and record how they went, rather than
        # leave their deliveries to wait out the lease.
        self.pool.shutdown(wait=True)


def start() -> threading.Event:
    """Send due deliveries (every webhook_poll_interval_s, and whenever an attempt ends)
    until the returned event is set."""
    stop = threading.Event()
    sender = Sender(get_settings())
    threading.Thread(target=sender.run, args=(stop,), name="cloze-webhooks",
                     daemon=True).start()
    return stop
