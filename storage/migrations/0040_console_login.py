"""The admin console's login (web/console/): a staff member's password hash, TOTP secret (AES-GCM under the
master key), the last TOTP time step used (a code is accepted once), consecutive failures and a lockout; and
the console's server-side sessions (only the SHA-256 of the cookie's token is stored).

A frozen copy of the columns and table as they were at this migration, independent of storage/admins.py.
"""

import peewee


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("admin_user", "password_hash", peewee.CharField(max_length=255, null=True)),
        migrator.add_column("admin_user", "totp_secret", peewee.BlobField(null=True)),  # nonce || AES-GCM
        migrator.add_column("admin_user", "totp_key_version", peewee.SmallIntegerField(null=True)),
        migrator.add_column("admin_user", "totp_last_step", peewee.BigIntegerField(null=True)),
        migrator.add_column("admin_user", "failed_logins", peewee.IntegerField(default=0)),
        migrator.add_column("admin_user", "locked_until_ms", peewee.BigIntegerField(null=True)),
    )

    class AdminSession(peewee.Model):
        token_hash = peewee.CharField(max_length=64, primary_key=True)  # sha256 hex of the cookie's token
        admin_id = peewee.BigIntegerField(null=True, index=True)  # None: before login (the login form's CSRF)
        data = peewee.TextField()  # JSON: the Flask session (Flask-WTF's CSRF token)
        created_at_ms = peewee.BigIntegerField()
        last_seen_ms = peewee.BigIntegerField(index=True)  # idle timeout, and the purge of old rows

        class Meta:
            database = db
            table_name = "admin_session"

    db.create_tables([AdminSession])
