"""The Flask front (gatesrv): HTTP API v1 over the actor system. See web/app.py (create_app)."""

from web.app import create_app, create_ops_app

__all__ = ["create_app", "create_ops_app"]
