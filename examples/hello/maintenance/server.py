#!/usr/bin/env python3
"""hello's maintenance page: the build `bgctl pause --max 30s --page DIR`
(or `[pause] page`) starts in the waiting color once a pause has lasted
--max. It is the example app with one change: every request but the health
check is answered `503 Service Unavailable` with `Retry-After` and the page
in `page.html` beside this file. It runs under the example's own [app]
command (`python3 server.py`), which is what a page needs: bgd starts it
like any build.

The rest is hello's server (Python 3.9+ stdlib only):

Sockets: when started by bgd (or systemd-socket-activate) it serves every
socket it inherits through the socket-activation protocol (LISTEN_FDS,
LISTEN_PID, LISTEN_FDNAMES; fds 3, 4, ...); in bgd's shared mode its `probe`
socket is one of them. When started on its own it binds 127.0.0.1:$PORT (default 8080).

Graceful drain on the first SIGTERM/SIGINT: close our copies of the listening
sockets (another process may still accept on them), let in-flight requests
finish, answer the next request on each keep-alive connection with
"Connection: close", close connections that stay idle for DRAIN_IDLE seconds,
then exit 0 when no connection is left. After DRAIN_TIMEOUT it gives up and
exits 1. A second signal exits 1 at once.
"""
VERSION = "maintenance"
RETRY_AFTER = "30"  # seconds, for the Retry-After header

import http.server
import os
import selectors
import signal
import socket
import sys
import threading
import time

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")

DRAIN_IDLE = 1.0       # while draining, close keep-alive connections idle this long
DRAIN_TIMEOUT = 25.0   # hard cap on the whole drain
IDLE_TIMEOUT = 60.0    # close idle keep-alive connections in normal operation
READ_TIMEOUT = 30.0    # socket timeout while reading a request or writing a response
DEBUG = bool(os.environ.get("HELLO_DEBUG"))  # set to log every request to stderr


draining = threading.Event()
drain_started = 0.0            # time.monotonic() of the first signal
active = 0                     # open client connections
active_lock = threading.Lock()


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def listening_sockets():
    """The sockets passed to us by socket activation, or one we bind ourselves."""
    env = os.environ
    nfds = int(env.get("LISTEN_FDS") or 0)
    for_us = env.get("LISTEN_PID") == str(os.getpid())
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(name, None)    # don't leak them to anything we might spawn
    if for_us and nfds > 0:
        socks = []
        for fd in range(3, 3 + nfds):
            os.set_inheritable(fd, False)
            socks.append(socket.socket(fileno=fd))  # family and type auto-detected
        return socks
    if nfds > 0:
        log(f"hello {VERSION}: LISTEN_PID is not our pid {os.getpid()} (a wrapper in between?), ignoring LISTEN_FDS")
    return [socket.create_server(("127.0.0.1", int(env.get("PORT") or 8080)))]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive by default
    timeout = READ_TIMEOUT

    def handle(self):
        # Same as BaseHTTPRequestHandler.handle(), except that between two
        # requests we wait in a way that notices the drain.
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection and self.wait_for_request():
            self.handle_one_request()

    def wait_for_request(self):
        """True once the next request (or EOF) can be read, False to close an idle connection."""
        sock = self.connection
        try:
            sock.setblocking(False)  # a pipelining client's request may already sit in our buffer
            try:
                if self.rfile.peek(1):
                    return True
            except BlockingIOError:
                pass
            idle_since = time.monotonic()
            sock.settimeout(0.2)
            while True:
                try:
                    sock.recv(1, socket.MSG_PEEK)  # data or EOF: handle_one_request reads it
                    return True
                except socket.timeout:
                    pass
                limit = DRAIN_IDLE if draining.is_set() else IDLE_TIMEOUT
                if time.monotonic() - max(idle_since, drain_started) > limit:
                    return False
        finally:
            sock.settimeout(self.timeout)

    def do_GET(self):
        path, _, _ = self.path.partition("?")
        if path == "/healthz":
            return self.reply(200, "ok\n")
        try:
            with open(PAGE, encoding="utf-8") as f:
                page = f.read()
        except OSError:
            page = "Down for maintenance. Please try again in a minute.\n"
        self.reply(503, page, "text/html; charset=utf-8", [("Retry-After", RETRY_AFTER)])

    do_HEAD = do_GET  # other methods get BaseHTTPRequestHandler's 501 (and a close)

    def reply(self, code, body, kind="text/plain; charset=utf-8", headers=()):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        if draining.is_set() or self.close_connection:
            self.send_header("Connection", "close")  # also sets self.close_connection
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, fmt, *args):
        if DEBUG:
            log(f"hello {VERSION} pid {os.getpid()}: {fmt % args}")


def serve_connection(conn, addr):
    """Runs in its own thread, for the whole life of one client connection."""
    global active
    try:
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # headers and body go out as 2 writes
        Handler(conn, addr if isinstance(addr, tuple) else ("unix", 0), None)
    except OSError as e:  # the client went away, timed out, ...
        if DEBUG:
            log(f"hello {VERSION}: connection error: {e!r}")
    finally:
        try:
            conn.shutdown(socket.SHUT_WR)  # our own connected socket, not a shared listener
        except OSError:
            pass
        conn.close()
        with active_lock:
            active -= 1


def on_signal(signum, frame):
    global drain_started
    if draining.is_set():
        os._exit(1)  # second signal: stop now
    drain_started = time.monotonic()
    draining.set()


def main():
    global active
    listeners = listening_sockets()
    sel = selectors.DefaultSelector()
    for s in listeners:
        # Non-blocking: the other color may accept the connection first, and a
        # blocking accept() after a lost race would hang until the next one.
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log(f"hello {VERSION} serving on {len(listeners)} sockets, pid {os.getpid()}")

    while not draining.is_set():
        for key, _ in sel.select(timeout=0.2):
            try:
                conn, addr = key.fileobj.accept()
            except (BlockingIOError, InterruptedError):
                continue  # another process won the race for this connection
            except OSError as e:  # e.g. ECONNABORTED, EMFILE
                log(f"hello {VERSION}: accept failed: {e!r}")
                time.sleep(0.05)
                continue
            with active_lock:
                active += 1
            threading.Thread(target=serve_connection, args=(conn, addr), daemon=True).start()

    # Drain. close() drops only our copy of each listening socket; never
    # shutdown() them, that would stop the other process accepting too.
    sel.close()
    for s in listeners:
        s.close()
    log(f"hello {VERSION} draining, pid {os.getpid()}, {active} connections open")
    deadline = drain_started + DRAIN_TIMEOUT
    while active and time.monotonic() < deadline:
        time.sleep(0.05)
    if active:
        log(f"hello {VERSION} drain timed out, pid {os.getpid()}, {active} connections cut")
        os._exit(1)
    log(f"hello {VERSION} drained, pid {os.getpid()}, exiting")
    sys.exit(0)


if __name__ == "__main__":
    main()
