// Socket.IO baseline for roomcast-bench: a minimal broadcast-to-room server.
//
// Events (all with an acknowledgement callback):
//   join    {room}                   -> joins the room; ack {room, seq}
//   publish {id, room, event, data}  -> next seq of the room, then broadcasts
//                                       "message" {room, seq, id, event, from, ts, data}
//                                       to every socket in the room (the publisher too); ack {}
// No authentication and no storage: the user id `from` is whatever the client sent as `sub`
// in its connect packet (`40{"sub":"…"}`).
//
// Listens on ROOMCAST_BENCH_LISTEN (host:port, default 127.0.0.1:0), WebSocket transport only,
// and prints `listening on http://ADDR` once it accepts connections.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

const listen = process.env.ROOMCAST_BENCH_LISTEN || "127.0.0.1:0";
const colon = listen.lastIndexOf(":");
const host = listen.slice(0, colon);
const port = Number(listen.slice(colon + 1));

const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
  httpCompression: false,
  maxHttpBufferSize: 64 * 1024,
});

const seqs = new Map();

io.on("connection", (socket) => {
  const auth = socket.handshake.auth || {};
  const from = typeof auth.sub === "string" ? auth.sub : "anonymous";

  socket.on("join", (msg, ack) => {
    if (!msg || typeof msg.room !== "string") return;
    socket.join(msg.room);
    if (typeof ack === "function") ack({ room: msg.room, seq: seqs.get(msg.room) || 0 });
  });

  socket.on("publish", (msg, ack) => {
    if (!msg || typeof msg.room !== "string" || !socket.rooms.has(msg.room)) {
      if (typeof ack === "function") ack({ error: "not_joined" });
      return;
    }
    const seq = (seqs.get(msg.room) || 0) + 1;
    seqs.set(msg.room, seq);
    if (typeof ack === "function") ack({});
    io.to(msg.room).emit("message", {
      room: msg.room,
      seq,
      id: msg.id,
      event: msg.event,
      from,
      ts: Date.now(),
      data: msg.data,
    });
  });
});

httpServer.listen(port, host, () => {
  const addr = httpServer.address();
  process.stdout.write(`listening on http://${addr.address}:${addr.port}\n`);
});

function stop() {
  io.close();
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
