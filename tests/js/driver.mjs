// supabase-js (the real npm package) driven line by line from the Python tests.
//
// stdin: one JSON command per line; stdout: one JSON event per line. Commands:
//   {"cmd":"signIn"}                                  -> {"type":"signedIn","userId","accessToken"}
//   {"cmd":"subscribe","name","topic","bindings":[…]} -> {"type":"status","name","status","error"}
//                                                        {"type":"change","name","binding","payload"}
//                                                        {"type":"system","name","payload"}
//   {"cmd":"setAuth","token"}                         -> nothing (as the client's own setAuth)
//   {"cmd":"unsubscribe","name"}                      -> {"type":"unsubscribed","name","result"}
//   {"cmd":"heartbeats"}                              -> {"type":"heartbeats","counts":{…}}
//   {"cmd":"exit"}
// Environment: SUPABASE_URL, SUPABASE_ANON_KEY. Node 20 has no dependable global WebSocket
// (experimental there: a refused reconnect never fires "close", so phoenix stops retrying), so
// the transport is the `ws` package, supabase-js's documented option for Node below 22.
import { createInterface } from "node:readline";
import { createClient } from "@supabase/supabase-js";
import WebSocket from "ws";

const emit = (event) => process.stdout.write(JSON.stringify(event) + "\n");
const heartbeats = {};
const supabase = createClient(process.env.SUPABASE_URL, process.env.SUPABASE_ANON_KEY, {
  auth: { persistSession: false, autoRefreshToken: false },
  realtime: {
    transport: WebSocket,
    // REALTIME_DEBUG=1: the client's own transport log on stderr
    logger: process.env.REALTIME_DEBUG ? (kind, msg, data) => console.error(kind, msg, JSON.stringify(data)) : undefined,
    heartbeatCallback: (status) => {
      heartbeats[status] = (heartbeats[status] || 0) + 1;
    },
  },
});
const channels = {};

async function handle(command) {
  switch (command.cmd) {
    case "signIn": {
      const { data, error } = await supabase.auth.signInAnonymously();
      if (error) throw error;
      emit({ type: "signedIn", userId: data.user.id, accessToken: data.session.access_token });
      return;
    }
    case "subscribe": {
      const channel = supabase.channel(command.topic);
      command.bindings.forEach((binding, index) => {
        channel.on("postgres_changes", binding, (payload) =>
          emit({ type: "change", name: command.name, binding: index, payload }),
        );
      });
      channel.on("system", {}, (payload) => emit({ type: "system", name: command.name, payload }));
      channels[command.name] = channel;
      channel.subscribe((status, error) =>
        emit({ type: "status", name: command.name, status, error: error ? String(error) : null }),
      );
      return;
    }
    case "setAuth":
      await supabase.realtime.setAuth(command.token);
      return;
    case "unsubscribe": {
      const result = await channels[command.name].unsubscribe();
      emit({ type: "unsubscribed", name: command.name, result });
      return;
    }
    case "heartbeats":
      emit({ type: "heartbeats", counts: heartbeats, connected: supabase.realtime.isConnected() });
      return;
    case "exit":
      await supabase.removeAllChannels();
      process.exit(0);
  }
}

process.on("uncaughtException", (error) => {
  emit({ type: "crash", error: String(error && error.stack ? error.stack : error) });
  process.exit(3);
});

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  try {
    await handle(JSON.parse(line));
  } catch (error) {
    emit({ type: "error", error: String(error) });
  }
}
process.exit(0);
