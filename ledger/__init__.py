"""The double-entry ledger as plain logic (no threads, no I/O): the shard actor is a thin shell over it."""

from ledger.book import AVAILABLE, FROZEN, Book, Leg

__all__ = ["AVAILABLE", "FROZEN", "Book", "Leg"]
