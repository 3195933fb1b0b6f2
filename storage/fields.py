"""Exact integer amount column: DECIMAL(65,0) on MySQL, TEXT of digits on SQLite."""

from __future__ import annotations

from decimal import Decimal

import peewee

from core.limits import AMOUNT_LIMIT


class AmountField(peewee.Field):
    field_type = "AMOUNT"  # mapped per database in storage.db (MYSQL_FIELD_TYPES / SQLITE_FIELD_TYPES)

    def db_value(self, value: int | None) -> str | None:
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"amounts are ints, got {type(value).__name__}")
        if not -AMOUNT_LIMIT < value < AMOUNT_LIMIT:  # SQLite TEXT must refuse what DECIMAL(65,0) refuses
            raise ValueError(f"amount {value} does not fit DECIMAL(65,0)")
        return str(value)

    def python_value(self, value: object) -> int | None:
        if value is None:
            return None
        if isinstance(value, Decimal):
            if value != value.to_integral_value():
                raise ValueError(f"non-integral amount in database: {value}")
            return int(value)
        return int(value)  # SQLite TEXT of digits
