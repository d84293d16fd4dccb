"""The HTTP API, one router per resource (services/http/*.py), built by `create_app`."""

from __future__ import annotations

from services.http.app import create_app

__all__ = ["create_app"]
