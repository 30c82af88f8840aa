"""The benchmark's WSGI app: a trivial handler that gunicorn serves.

GET /healthz answers "ok" (bgd's HTTP probe); anything else answers one short
line that names the release (BG_RELEASE, set by bgd; "-" when run alone) and
the process, so a load generator can check who answered.
"""
import os

RELEASE = os.environ.get("BG_RELEASE", os.environ.get("BENCH_RELEASE", "-")).encode()
COLOR = os.environ.get("BG_COLOR", "-").encode()


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/healthz":
        body = b"ok\n"
    else:
        body = b"hello release=" + RELEASE + b" color=" + COLOR + b" pid=" + str(os.getpid()).encode() + b"\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
