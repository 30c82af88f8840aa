// examples/servers/node: Node's http module on the listening socket whose
// fd is argv[2].
const http = require('http');

const server = http.createServer((req, res) => {
  const body = req.url === '/healthz'
    ? 'ok\n'
    : `hello from v1 release=${process.env.BG_RELEASE} color=${process.env.BG_COLOR} pid=${process.pid}\n`;
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
});
// Each keep-alive connection ends after 100 requests (Connection: close),
// so after a release the old color's connections end on their own within
// bgd's drain_delay, and Node gets SIGTERM with none open.
server.maxRequestsPerSocket = 100;
server.listen({ fd: Number(process.argv[2]) });
// Node exits at once on SIGTERM unless it is handled: finish, then exit.
process.on('SIGTERM', () => server.close(() => process.exit(0)));
