"""The webhook sender: a thread in each API process and in each worker's main process that
POSTs due deliveries (service/domain/webhooks.py) to their jobs' webhooks, signed.

Claims are conditional UPDATEs, so any number of senders may run and each attempt is
made by one of them. Delivery is at least once (a sender that dies after the POST and
before recording it is retried after its lease): receivers dedupe on X-Cloze-Delivery.
"""

import contextlib
import logging
import threading
import time

import httpx

from service.db import session_scope
from service.domain import webhooks
from service.domain.tables import utcnow
from service.domain.webhooks import Due, UnsafeTarget
from service.settings import Settings, get_settings

log = logging.getLogger("cloze.webhooks")
USER_AGENT = "Cloze-Webhooks/1"


def lease_s(settings: Settings) -> float:
    """How long a claim holds a delivery: well past one attempt's timeouts (connect,
    write, read), so only a sender that died loses it."""
    return 4 * settings.webhook_timeout_s + 10


def make_client(settings: Settings) -> httpx.Client:
    # No redirects (a 3xx is a failed attempt: it could point anywhere), no proxies from
    # the environment (they would resolve the name, not us), no kept connections (one
    # pinned to an address checked for another name must not carry the next delivery).
    return httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False,
                        trust_env=False, limits=httpx.Limits(max_keepalive_connections=0))


def post(client: httpx.Client, due: Due, settings: Settings) -> tuple[int | None, str | None]:
    """One attempt: (the answer's status code or None, an error or None when delivered)."""
    body = due.body.encode()
    url = httpx.URL(due.url)
    timestamp = int(time.time())
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               webhooks.EVENT_HEADER: due.event, webhooks.DELIVERY_HEADER: due.delivery_id,
               webhooks.TIMESTAMP_HEADER: str(timestamp),
               webhooks.SIGNATURE_HEADER: webhooks.sign(due.secret, timestamp, body)}
    extensions = {}
    # The policy the API accepted the webhook under; an explicit false here overrides it.
    if not due.private_ok or settings.webhook_allow_private is False:
        host = url.raw_host.decode("ascii")
        try:
            address = webhooks.global_addresses(host, url.port or (
                443 if url.scheme == "https" else 80))[0]
        except UnsafeTarget as exc:
            return None, f"refused: {exc}"
        # Connect to the address just checked, not to what a second lookup answers (DNS
        # rebinding); the name still goes in Host and, for TLS, in SNI and the
        # certificate check.
        headers["Host"] = url.netloc.decode("ascii")
        extensions["sni_hostname"] = host
        url = url.copy_with(host=address)
    try:
        answer = client.post(url, content=body, headers=headers, extensions=extensions)
    except httpx.TimeoutException:
        return None, f"timed out after {settings.webhook_timeout_s:g} s"
    except httpx.HTTPError as exc:
        return None, f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
    if answer.is_redirect:
        return answer.status_code, f"HTTP {answer.status_code}: redirects are not followed"
    if not answer.is_success:
        return answer.status_code, f"HTTP {answer.status_code}"
    return answer.status_code, None


def deliver_next(client: httpx.Client) -> bool:
    """Claim one due delivery and make its attempt; False when none was due."""
    settings = get_settings()
    with session_scope() as session:
        due = webhooks.claim_next(session, now=utcnow(), lease_s=lease_s(settings))
    if due is None:
        return False
    status_code, error = post(client, due, settings)
    if error is not None:
        log.warning("webhook %s (%s) attempt %d: %s", due.delivery_id, due.event,
                    due.attempt, error)
    with session_scope() as session:
        webhooks.record_attempt(session, due, now=utcnow(), status_code=status_code,
                                error=error, settings=settings)
    return True


def start(guard: contextlib.AbstractContextManager[object] | None = None) -> threading.Event:
    """Send due deliveries every webhook_poll_interval_s until the returned event is set.
    Each attempt runs inside `guard` (a worker's main process: no fork in the middle of
    one, which could leave the child a lock held forever); an attempt is bounded by its
    timeouts, so a job's start waits at most that long."""
    stop = threading.Event()
    settings = get_settings()

    def loop() -> None:
        with make_client(settings) as client:
            while not stop.wait(settings.webhook_poll_interval_s):
                try:
                    while not stop.is_set():
                        with guard or contextlib.nullcontext():
                            if not deliver_next(client):
                                break
                except Exception as exc:  # a database outage: try again next round
                    log.warning("webhook round failed: %s", exc.__class__.__name__)

    threading.Thread(target=loop, name="cloze-webhooks", daemon=True).start()
    return stop
