"""Registry errors: raised deep down, turned into a response at one boundary (``responses.py``)."""

from __future__ import annotations


class ResponseAborted(Exception):
    """The client already has part of a response: the connection can only be closed."""


class RegistryError(Exception):
    """An error the client sees as ``{"errors":[{"code", "message", "detail"}]}``."""

    status = 500
    code = "UNKNOWN"
    close = False
    # A 404 that every project confirmed: it may be remembered in the negative cache.
    definite = False

    def __init__(
        self,
        message: str,
        detail: object = None,
        *,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers


class NameInvalid(RegistryError):
    status, code = 400, "NAME_INVALID"


class TagInvalid(RegistryError):
    status, code = 400, "TAG_INVALID"


class DigestInvalid(RegistryError):
    status, code = 400, "DIGEST_INVALID"


class BadRequest(RegistryError):
    status, code = 400, "UNSUPPORTED"


class PaginationNumberInvalid(RegistryError):
    status, code = 400, "PAGINATION_NUMBER_INVALID"


class BadRequestClose(BadRequest):
    close = True


class HeadersTooLarge(RegistryError):
    status, code, close = 431, "UNSUPPORTED", True


class UriTooLong(RegistryError):
    status, code, close = 414, "UNSUPPORTED", True


class RequestTimeout(RegistryError):
    status, code, close = 408, "UNSUPPORTED", True


class VersionNotSupported(RegistryError):
    status, code, close = 505, "UNSUPPORTED", True


class NameUnknown(RegistryError):
    status, code = 404, "NAME_UNKNOWN"


class ManifestUnknown(RegistryError):
    status, code = 404, "MANIFEST_UNKNOWN"


class BlobUnknown(RegistryError):
    status, code = 404, "BLOB_UNKNOWN"


class MethodNotAllowed(RegistryError):
    status, code = 405, "UNSUPPORTED"


class Unauthorized(RegistryError):
    status, code = 401, "UNAUTHORIZED"


class Denied(RegistryError):
    status, code = 403, "DENIED"


class TooManyRequests(RegistryError):
    status, code = 429, "TOOMANYREQUESTS"


class BadGateway(RegistryError):
    status, code = 502, "UNAVAILABLE"


class Unavailable(RegistryError):
    status, code = 503, "UNAVAILABLE"
