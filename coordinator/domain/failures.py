"""Failures every layer may meet and the API answers alike, whichever use case met them."""

from __future__ import annotations


class StoreBusy(Exception):
    """The database could not serve this now and nothing was written: a deadlock it broke by choosing this
    transaction, a serialization failure, a connection it lost or shut. Trying again may succeed (the API
    answers 503 with Retry-After)."""
