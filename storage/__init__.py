"""Storage: one database bound from a URL, peewee models, versioned migrations.

The relational database is the source of truth. Every actor opens its own connection in its own
thread (`on_start`) and gives it back in `on_stop`.
"""

from storage.db import connect_database, database_proxy, migrate

__all__ = ["connect_database", "database_proxy", "migrate"]
