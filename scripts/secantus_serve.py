"""Runs secantusd-py on a free loopback port for as long as stdin stays open.

Called by scripts/mongo-server. Prints `uri=...` and `pid=...` on stdout when
the server accepts connections. The server's own output goes to stderr.
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

START_TIMEOUT_S = 60
ATTEMPTS = 3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def die_with_parent():
    """Runs in the server's process before it starts: the kernel stops it
    when this supervisor dies, however it dies, so no server outlives its
    test run."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def server_env():
    """The server's environment: ours, with SECANTUS_LD_PRELOAD (a library
    such as libfaketime, which moves the server's clock) as its LD_PRELOAD.
    Only the server gets it: this supervisor's own sleeps fail under it."""
    env = dict(os.environ)
    preload = env.pop("SECANTUS_LD_PRELOAD", None)
    if preload:
        env["LD_PRELOAD"] = preload
    return env


def start(binary, args):
    """Starts the server, retrying on another port if it dies at start-up
    (another process may take the free port first). A `--port` given in
    args is used as is (a restarted server keeps its address)."""
    fixed = "--port" in args
    for _ in range(1 if fixed else ATTEMPTS):
        port = int(args[args.index("--port") + 1]) if fixed else free_port()
        extra = [] if fixed else ["--port", str(port)]
        proc = subprocess.Popen(
            [binary, "--host", "127.0.0.1", *extra, *args],
            env=server_env(),
            preexec_fn=die_with_parent,
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr,
            stderr=sys.stderr,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            if accepts(port):
                return proc, port
            time.sleep(0.05)
        proc.kill()
        proc.wait()
    sys.exit("secantus_serve: the server did not start")


def main():
    binary, args = sys.argv[1], sys.argv[2:]
    if "--storage-path" not in args:
        args += ["--storage-path", ":memory:"]
    proc, port = start(binary, args)
    print(f"uri=mongodb://127.0.0.1:{port}/?directConnection=true", flush=True)
    print(f"pid={proc.pid}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def watch_stdin():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except OSError:
            pass
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    while not stop.wait(0.2):
        if proc.poll() is not None:
            # The server stopped by itself (a test may restart it): keep the
            # supervisor alive only as long as someone is listening.
            break
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
