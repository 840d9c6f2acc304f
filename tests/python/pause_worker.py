"""A worker of the pause nemesis (tests/pause_nemesis.rs) that uses the
Python package `mongolock` 1.3.4 on the same key as this crate's workers.

    pause_worker.py URI DB COLLECTION KEY OWNER STOP_AT_US

Loops until STOP_AT_US (microseconds since the epoch, the machine's clock):
takes the lock (expire 2 s, timeout 1 s), holds it up to 300 ms, releases it.
The package cannot learn that it lost a lock, so what it believes is, as the
package defines it, held from when `lock` returned until its own `expire`
(counted from the call, by this machine's clock) or the release, whichever
comes first. Prints `S 0 <start_us>` and `B 0 <start_us> <end_us>` lines
for each such belief, as the Rust workers do.
"""
import random
import sys
import time

from mongolock import MongoLock
from pymongo import MongoClient

EXPIRE = 2.0


def now_us():
    return int(time.time() * 1_000_000)


def main():
    uri, db, collection, key, owner, stop_at = sys.argv[1:7]
    stop_at = int(stop_at)
    lock = MongoLock(client=MongoClient(uri, serverSelectionTimeoutMS=5000),
                     db=db, collection=collection)
    while now_us() < stop_at:
        called = now_us()
        try:
            taken = lock.lock(key, owner, timeout=1, expire=EXPIRE)
        except Exception as error:  # a paused server: try again
            print(f"E {error!r}", file=sys.stderr)
            continue
        if not taken:
            continue
        start = now_us()
        expires = called + int(EXPIRE * 1_000_000)
        if start < expires:
            print(f"S 0 {start}", flush=True)
        time.sleep(random.uniform(0, 0.3))
        end = min(now_us(), expires)
        if start < expires:
            print(f"B 0 {start} {end}", flush=True)
        try:
            lock.release(key, owner)
        except Exception as error:
            print(f"E {error!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
