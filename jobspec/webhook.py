"""A job's webhook: where its status changes are POSTed, and the secret that signs them.

Only the URL's form is checked here (the engine reads specs too and resolves no names);
where the URL points (no private addresses) is the service's check, at submission and
again at each delivery.
"""

from urllib.parse import urlsplit

from pydantic import Field, field_validator

from jobspec.common import Strict


class WebhookSpec(Strict):
    url: str = Field(min_length=1, max_length=2048)
    # Signs every delivery (X-Cloze-Signature); write-only: the API never shows it again.
    # 16 characters at least: a short secret can be guessed from signed bodies offline.
    secret: str = Field(min_length=16, max_length=256, repr=False)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises on a port that is not a number in range)
        except ValueError as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if parts.scheme not in ("http", "https"):
            raise ValueError("only http and https URLs are accepted")
        if not parts.hostname:
            raise ValueError("the URL has no host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("credentials in the URL are not accepted; the secret signs "
                             "each delivery instead")
        return url
