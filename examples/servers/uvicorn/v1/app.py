"""The ASGI app of examples/servers/uvicorn: "hello from v1" on every path."""
import os
import random

VERSION = "v1"


# One response in 20, at random, ends its keep-alive connection
# (Connection: close), so after a release the old color's busy connections
# end on their own within bgd's drain_delay, and the server gets its stop
# signal with none open. (Not every 20th response: with the clients taking
# turns, that could always close the same client's connection. 1 in 20, not
# 1 in 100: with --fd, uvicorn takes about 40 ms per keep-alive request.)
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
    if random.random() < 0.05:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
