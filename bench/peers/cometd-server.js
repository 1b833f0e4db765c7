// cometd-nodejs-server 1.2.1 as a Bayeux server for bench/compare, on a plain http server.
// Env: PORT (0 = any), TIMEOUT_MS (connect hold), MAX_INTERVAL_MS (session expiry without
// a connect). GET /stats -> {"sessions": N}.
'use strict';
const http = require('http');
const cometd = require('cometd-nodejs-server');

const server = cometd.createCometDServer({
  timeout: Number(process.env.TIMEOUT_MS || 10000),
  maxInterval: Number(process.env.MAX_INTERVAL_MS || 10000),
});
let sessions = 0;
server.addListener('sessionAdded', () => { sessions++; });
server.addListener('sessionRemoved', () => { sessions--; });

const httpServer = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/stats') {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ sessions }));
    return;
  }
  if (req.url.startsWith('/cometd')) {
    server.handle(req, res);
    return;
  }
  res.writeHead(404);
  res.end();
});
httpServer.keepAliveTimeout = 0;
httpServer.headersTimeout = 0;
httpServer.requestTimeout = 0;
httpServer.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  console.log(`cometd listening on http://127.0.0.1:${httpServer.address().port}/cometd`);
});
process.on('SIGTERM', () => process.exit(0));
