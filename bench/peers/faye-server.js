// Faye 1.4.3 as a Bayeux server for bench/compare: NodeAdapter mounted at /cometd.
// Env: PORT (0 = any), TIMEOUT_MS (connect hold; Faye expires a client 2 x timeout after
// its last connect began, i.e. about one timeout after a held connect ends — the same
// window as maxInterval = timeout elsewhere). GET /stats -> {"sessions": N}.
'use strict';
const http = require('http');
const faye = require('faye');

const timeoutMs = Number(process.env.TIMEOUT_MS || 10000);
const bayeux = new faye.NodeAdapter({ mount: '/cometd', timeout: timeoutMs / 1000 });
let sessions = 0;
bayeux.on('handshake', () => { sessions++; });
bayeux.on('disconnect', () => { sessions--; });

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/stats') {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ sessions }));
    return;
  }
  res.writeHead(404);
  res.end();
});
server.keepAliveTimeout = 0; // never close an idle keep-alive connection (as Halley)
server.headersTimeout = 0;
server.requestTimeout = 0;
bayeux.attach(server);
server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  console.log(`faye listening on http://127.0.0.1:${server.address().port}/cometd`);
});
process.on('SIGTERM', () => process.exit(0));
