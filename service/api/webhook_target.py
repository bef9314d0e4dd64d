"""The submission check of a webhook's target, for every route that takes a job spec: a
job's own webhook (POST /v1/jobs, its dry run) and a sweep's base, whose trials are jobs
with that webhook. One function, so a sweep cannot skip a rule a job is held to."""

from starlette.concurrency import run_in_threadpool

from jobspec.webhook import WebhookSpec
from service.domain import webhooks
from service.domain.refusals import Invalid
from service.settings import Settings


async def check_webhook(hook: WebhookSpec | None, settings: Settings, *, within: str = ""
                        ) -> None:
    """422 for a webhook that reaches non-public addresses (its name is resolved: off the
    event loop). `within`: where the spec sits in the request ("base." for a sweep's), so
    the error names the field the user wrote."""
    if hook is None:
        return
    try:
        await run_in_threadpool(webhooks.check_target, hook.url, settings)
    except Invalid as exc:
        if not within:
            raise
        raise Invalid(exc.code, within + exc.message,
                      within + exc.param if exc.param else within.rstrip(".")) from None
