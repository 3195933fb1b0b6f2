"""core/ids.py: unique within a process, from threads at once, and never shared with a forked child."""

from __future__ import annotations

import os
import threading

from core.ids import unique_hex


def test_ids_are_unique_across_threads():
    seen: list[list[str]] = [[] for _ in range(8)]

    def draw(n: int) -> None:
        seen[n].extend(unique_hex() for _ in range(5_000))

    threads = [threading.Thread(target=draw, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [i for part in seen for i in part]
    assert len(set(ids)) == len(ids) == 40_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids[:10])


def test_a_forked_child_draws_a_prefix_of_its_own():
    """Without the redraw at fork, parent and child would continue the same counter under the same key."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, unique_hex().encode())
        os._exit(0)
    parent_id = unique_hex()
    os.close(write)
    child_id = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert child_id != parent_id and len(child_id) == 32
