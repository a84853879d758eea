// Preloaded into Portkey's gateway with `node --require` (see peers.py).
//
// Why: the gateway's Node entry point (build/start-server.js) calls @hono/node-server's serve({fetch, port})
// without a hostname and has no flag for one, so it would listen on every interface. A benchmark peer must not be
// reachable from outside the machine, so any listen(port) that names no host gets PEER_BIND_HOST (127.0.0.1 by
// default) instead. Nothing else about the server changes: this runs once, before the gateway's own code.
"use strict";

const net = require("net");

const host = process.env.PEER_BIND_HOST || "127.0.0.1";
const listen = net.Server.prototype.listen;

function isPort(value) {
  return typeof value === "number" || (typeof value === "string" && /^\d+$/.test(value));
}

net.Server.prototype.listen = function (...args) {
  const first = args[0];
  if (isPort(first)) {
    if (args.length === 1 || typeof args[1] === "function") {
      args.splice(1, 0, host); // listen(port[, callback])
    } else if (args[1] === undefined || args[1] === null) {
      args[1] = host; // listen(port, undefined, callback): what @hono/node-server does
    }
  } else if (first && typeof first === "object" && !Array.isArray(first) && isPort(first.port) && !first.host) {
    args[0] = { ...first, host }; // listen({port})
  }
  return listen.apply(this, args);
};
