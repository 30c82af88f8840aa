"""The WSGI app of examples/servers/gunicorn: "hello from v1" on every path."""
import os

VERSION = "v1"


def app(environ, start_response):
    if environ["PATH_INFO"] == "/healthz":
        body = b"ok\n"
    else:
        body = "hello from {} release={} color={} pid={}\n".format(
            VERSION, os.environ.get("BG_RELEASE"), os.environ.get("BG_COLOR"), os.getpid()
        ).encode()
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]

    start_response("200 OK", headers)
    return [body]
