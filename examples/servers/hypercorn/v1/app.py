"""The ASGI app of examples/servers/hypercorn: "hello from v1" on every path."""
import os

VERSION = "v1"


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/healthz":
        body = b"ok\n"
    else:
        body = "hello from {} release={} color={} pid={}\n".format(
            VERSION, os.environ.get("BG_RELEASE"), os.environ.get("BG_COLOR"), os.getpid()
        ).encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]

    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
