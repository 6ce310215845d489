"""Errors with a stable code, which the CLI and the wire protocol carry unchanged."""

from __future__ import annotations


class LanecoreError(Exception):
    """An error a caller can act on: ``code`` is stable, ``message`` is for people."""

    code = "INTERNAL"

    def __init__(self, message: str, *, code: str | None = None,
                 details: dict | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        #: Machine-readable particulars (which field, which coupon, how much short…);
        #: on the wire as the error object's ``details`` map when not empty.
        self.details = dict(details or {})

    def to_dict(self) -> dict:
        out = {"code": self.code, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out


class ConfigError(LanecoreError):
    """The store configuration file is unreadable or says something impossible."""

    code = "BAD_CONFIG"


class CatalogError(LanecoreError):
    """The catalogue cannot be read, written or imported."""

    code = "CATALOG_ERROR"
