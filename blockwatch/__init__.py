"""Following the chain: the cursor and the walk back to a fork point (watcher), reading blocks and
transfers (scanner), deposit states (deposits), the watch set of deposit addresses, and acting on what
is found (crediting). The BlockWatch actor (actors/blockwatch.py) is a thin shell over it."""
