"""The one exception the client raises: the API's error body, or why no answer came."""


class ClozeError(Exception):
    """An API error (`status`, and `code`, `message`, `param` from the body
    `{"error": {"code", "message", "param"}}`), or no answer at all: then `status` is None
    and `code` is "connection_error"."""

    def __init__(self, status: int | None, code: str, message: str,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param

    def __str__(self) -> str:
        where = f" ({self.param})" if self.param and self.param not in self.message else ""
        if self.status is None:
            return f"{self.message}{where}"
        return f"{self.status} {self.code}: {self.message}{where}"
