"""fastapp: the smallest app that bgd can run, for timing bgd's own overhead.

Standard-library Python, one thread, started as `/usr/bin/python3 -S fastapp.py`.
It serves every socket it inherits (LISTEN_FDS, from fd 3; in shared mode with
health.http, bgd's probe socket is one of them) and answers every request with
200 and a short body, closing
the connection. When NOTIFY_SOCKET is set it sends READY=1 once its sockets
are ready. SIGTERM: exit 0 at once (it has no request in flight between two
loop turns). Without LISTEN_FDS it binds 127.0.0.1:$PORT. With BENCH_HEALTHZ_LOG
set, it prints `bench-healthz release=N t=NS` (time.time_ns(), CLOCK_REALTIME)
each time it has answered a GET /healthz (the flip latency measurement).
"""
import os
import select
import signal
import socket
import sys
import time

BODY = b"hello fast release=" + os.environ.get("BG_RELEASE", "-").encode() + b"\n"
LOG_HEALTHZ = bool(os.environ.get("BENCH_HEALTHZ_LOG"))
RELEASE = os.environ.get("BG_RELEASE", "-")
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BODY), BODY)


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    n = int(os.environ.get("LISTEN_FDS") or 0)
    if n and os.environ.get("LISTEN_PID") == str(os.getpid()):
        socks = [socket.socket(fileno=fd) for fd in range(3, 3 + n)]
    else:
        socks = [socket.create_server(("127.0.0.1", int(os.environ.get("PORT") or 8080)))]
    path = os.environ.get("NOTIFY_SOCKET")
    if path:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(b"READY=1", "\0" + path[1:] if path.startswith("@") else path)
        s.close()
    while True:
        ready, _, _ = select.select(socks, [], [])
        for ls in ready:
            try:
                c, _ = ls.accept()
            except (BlockingIOError, InterruptedError):
                continue
            try:
                c.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if data:
                    c.sendall(RESP)
                    if LOG_HEALTHZ and data.startswith(b"GET /healthz"):
                        os.write(1, b"bench-healthz release=%s t=%d\n" % (RELEASE.encode(), time.time_ns()))
            except OSError:
                pass
            finally:
                c.close()


main()
