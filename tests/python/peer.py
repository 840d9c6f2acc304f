"""A worker that uses the Python package `mongolock`, for the migration tests.

    peer.py URI DB COLLECTION ACTION KEY OWNER [EXPIRE]

ACTION is `lock` (prints True or False; EXPIRE in seconds, none if absent),
`release`, or `is_locked` (prints True or False).
"""
import sys

from mongolock import MongoLock
from pymongo import MongoClient


def main():
    uri, db, collection, action, key, owner = sys.argv[1:7]
    expire = int(sys.argv[7]) if len(sys.argv) > 7 else None
    lock = MongoLock(client=MongoClient(uri), db=db, collection=collection)
    if action == "lock":
        print(lock.lock(key, owner, expire=expire))
    elif action == "release":
        lock.release(key, owner)
        print(True)
    elif action == "is_locked":
        print(lock.is_locked(key))
    else:
        sys.exit(f"unknown action {action}")


if __name__ == "__main__":
    main()
