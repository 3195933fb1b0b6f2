"""The console's review queue (web/console/views_withdrawals.py) filters withdrawals by status and asset, oldest
first, paged by id (keyset): (status, asset, id) serves that filter in index order with no sort and no scan of
other assets' rows. (status, id) from 0013 serves the unfiltered queue; (to_address, id) its "first withdrawal
to this address" check; (account_id, id) its recent activity."""


def up(migrator, db):
    migrator.migrate(migrator.add_index("withdrawal", ("status", "asset", "id"), False))
