"""The actors, one module each: Allocator (accountsrv), TransrvShard (transrv), BlockWatch, Signer.

Each actor is a thin Pykka shell; the logic it wraps lives in plain classes that are tested without threads.
"""
