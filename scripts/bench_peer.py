"""The benchmark's peer process for the Python package `mongolock` (1.3.4).

    bench_peer.py URI DB COLLECTION

Speaks the line protocol of `examples/bench.rs` on standard input/output:

    HOLD key              -> HELD key
    RELEASE key           -> RELEASED key <epoch us at the release's start>
    WAIT key              -> ACQUIRED key <epoch us>, then DONE key once
                             released (in the background: the peer keeps
                             answering meanwhile)
    CONTEND key n secs    -> waits for GO, then n threads take and release
                             key for secs seconds -> LATENCIES count
                             us:at:worker,... (each acquisition's wait, the
                             epoch us it got the lock, and which thread)
    IDLE key n secs       -> n threads wait on key (held elsewhere); after a
                             settling time, counts commands for secs seconds
                             -> IDLE commands
    COMMANDS              -> COMMANDS <commands sent so far> <empty getMores> <writes> <change events>
    QUIT
"""
import sys
import threading
import time
import uuid

from mongolock import MongoLock
from pymongo import MongoClient, monitoring

SETTLE = 3.0


class Counter(monitoring.CommandListener):
    def __init__(self):
        self.count = 0
        self.writes = 0
        self.guard = threading.Lock()

    def started(self, event):
        if event.command_name not in ("hello", "isMaster", "ismaster"):
            with self.guard:
                self.count += 1
                if event.command_name in ("insert", "update", "delete", "findAndModify"):
                    self.writes += 1

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


def now_us():
    return int(time.time() * 1_000_000)


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main():
    uri, db, collection = sys.argv[1:4]
    counter = Counter()
    client = MongoClient(uri, event_listeners=[counter])
    lock = MongoLock(client=client, db=db, collection=collection)
    client.admin.command("ping")
    held = {}
    say("READY")
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        command, args = words[0], words[1:]
        if command == "HOLD":
            owner = uuid.uuid4().hex
            lock.lock(args[0], owner, timeout=60, expire=60)
            held[args[0]] = owner
            say(f"HELD {args[0]}")
        elif command == "RELEASE":
            start = now_us()
            lock.release(args[0], held.pop(args[0]))
            say(f"RELEASED {args[0]} {start}")
        elif command == "WAIT":

            def wait(key):
                owner = uuid.uuid4().hex
                if not lock.lock(key, owner, timeout=60, expire=60):
                    say(f"FAILED {key}")
                    return
                say(f"ACQUIRED {key} {now_us()}")
                lock.release(key, owner)
                say(f"DONE {key}")

            # In a thread: the peer keeps answering (COMMANDS) meanwhile.
            threading.Thread(target=wait, args=(args[0],)).start()
        elif command == "CONTEND":
            key, threads, secs = args[0], int(args[1]), float(args[2])
            say("SET")
            sys.stdin.readline()  # GO
            end = time.monotonic() + secs
            samples = []

            def work(worker):
                owner = uuid.uuid4().hex
                while time.monotonic() < end:
                    start = time.monotonic()
                    if lock.lock(key, owner, timeout=120, expire=60):
                        waited = int((time.monotonic() - start) * 1_000_000)
                        samples.append(f"{waited}:{now_us()}:{worker}")
                        lock.release(key, owner)

            workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            say(f"LATENCIES {len(samples)} " + ",".join(map(str, samples)))
        elif command == "IDLE":
            key, threads, secs = args[0], int(args[1]), float(args[2])
            workers = [
                threading.Thread(
                    target=lock.lock,
                    args=(key, uuid.uuid4().hex),
                    kwargs={"timeout": SETTLE + secs, "expire": 60},
                    daemon=True,
                )
                for _ in range(threads)
            ]
            for w in workers:
                w.start()
            time.sleep(SETTLE)
            before = counter.count
            time.sleep(secs)
            say(f"IDLE {counter.count - before}")
            for w in workers:
                w.join()
        elif command == "COMMANDS":
            say(f"COMMANDS {counter.count} 0 {counter.writes} 0")
        elif command == "QUIT":
            return


if __name__ == "__main__":
    main()
