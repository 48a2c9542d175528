"""The sidecar: ``/metrics``, health endpoints, ``/api/summary`` and a live page."""

from ragobs._server.app import create_app
from ragobs._server.sidecar import Sidecar, resolve_address

__all__ = ["Sidecar", "create_app", "resolve_address"]
