"""Errors, each carrying the HTTP status and Anthropic error type it maps to.

    PrefixgateError                      base: status, error_type, message
    ├── RequestError                     the client's request is at fault
    │   ├── InvalidRequest               400 invalid_request_error
    │   ├── AuthenticationFailed         401 authentication_error
    │   ├── PermissionDenied             403 permission_error
    │   ├── NotFound                     404 not_found_error
    │   └── PayloadTooLarge              413 request_too_large
    └── UpstreamError                    the upstream is at fault
        ├── UpstreamUnavailable          502 api_error (refused, reset, bad answer)
        ├── UpstreamTimeout              504 timeout_error
        └── UpstreamStatus               the upstream's own status and error body

``to_body()`` gives the Anthropic-shaped JSON body every error is sent as.
"""

from __future__ import annotations

from typing import Any, ClassVar


class PrefixgateError(Exception):
    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_body(self) -> dict[str, Any]:
        return error_body(self.error_type, self.message)

    @property
    def retryable(self) -> bool:
        """Another replica of the same upstream may well succeed (refused, reset, 502/503)."""
        return False


class RequestError(PrefixgateError):
    status = 400
    error_type = "invalid_request_error"


class InvalidRequest(RequestError):
    pass


class AuthenticationFailed(RequestError):
    status = 401
    error_type = "authentication_error"


class PermissionDenied(RequestError):
    status = 403
    error_type = "permission_error"


class NotFound(RequestError):
    status = 404
    error_type = "not_found_error"


class PayloadTooLarge(RequestError):
    status = 413
    error_type = "request_too_large"


class UpstreamError(PrefixgateError):
    status = 502
    error_type = "api_error"


class UpstreamUnavailable(UpstreamError):
    @property
    def retryable(self) -> bool:
        return True


class UpstreamTimeout(UpstreamError):
    status = 504
    error_type = "timeout_error"


class UpstreamStatus(UpstreamError):
    """The upstream answered with an error status; keep its status and type."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.upstream_status = status
        self.upstream_error_type = error_type

    @property
    def retryable(self) -> bool:  # a replica overloaded, restarting or behind a dead proxy
        return self.upstream_status in (502, 503)

    def to_body(self) -> dict[str, Any]:
        return error_body(self.upstream_error_type, self.message)


_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type_for_status(status: int) -> str:
    """The Anthropic error type for an HTTP status."""
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}
