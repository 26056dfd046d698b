// A bridge written with matrix-appservice (matrix-org's AppService framework, the layer
// matrix-appservice-bridge is built on), driven by tests/interop/test_appservice_js.py.
//
//   node appservice_bridge.mjs register <registration.yaml> <as_url> <domain-regex>
//       writes the registration with AppServiceRegistration; prints RESULT {id, as_token, hs_token}
//   node appservice_bridge.mjs run <hs_url> <port> <id> <as_token> <hs_token> <domain> <person>
//       listens for transactions, pings, registers a ghost, creates a room inviting <person>,
//       prints "READY <room_id>", waits for the person's message, answers it, answers user
//       queries until "DONE" on stdin, prints RESULT.
import { AppService, AppServiceRegistration } from "matrix-appservice";

const [mode, ...args] = process.argv.slice(2);

function result(value) {
  console.log("RESULT " + JSON.stringify(value));
}

if (mode === "register") {
  const [file, url, domainRegex] = args;
  const reg = new AppServiceRegistration(url);
  reg.setId("js-bridge");
  reg.setHomeserverToken(AppServiceRegistration.generateToken());
  reg.setAppServiceToken(AppServiceRegistration.generateToken());
  reg.setSenderLocalpart("jsbot");
  reg.setRateLimited(false);
  reg.pushEphemeral = true;
  reg.addRegexPattern("users", `@js_.*:${domainRegex}`, true);
  reg.addRegexPattern("aliases", `#js_.*:${domainRegex}`, true);
  reg.outputAsYaml(file);
  result({ id: reg.getId(), as_token: reg.getAppServiceToken(), hs_token: reg.getHomeserverToken() });
  process.exit(0);
}

const [hsUrl, port, id, asToken, hsToken, domain, person] = args;
const received = [];
const ephemeral = [];
const queried = [];

async function call(method, path, body, userId) {
  const query = userId ? `${path.includes("?") ? "&" : "?"}user_id=${encodeURIComponent(userId)}` : "";
  const response = await fetch(hsUrl + path + query, {
    method,
    headers: { Authorization: `Bearer ${asToken}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: response.status, body: await response.json().catch(() => null) };
}

async function registerGhost(localpart) {
  return call("POST", "/_matrix/client/v3/register", { type: "m.login.application_service", username: localpart });
}

const as = new AppService({ homeserverToken: hsToken });
as.on("event", (event) => received.push(event));
as.on("ephemeral", (event) => ephemeral.push(event));
as.onUserQuery = async (userId) => {
  // The homeserver asks about a user of our namespace nobody has seen yet: create it.
  queried.push(userId);
  const localpart = userId.slice(1).split(":")[0];
  await registerGhost(localpart);
  await call("PUT", `/_matrix/client/v3/profile/${encodeURIComponent(userId)}/displayname`, { displayname: "Créé à la demande" }, userId);
};
await as.listen(Number(port), "127.0.0.1");

// matrix-appservice has no /_matrix/app/v1/ping: the homeserver must say so, not hang.
const ping = await call("POST", `/_matrix/client/v1/appservice/${id}/ping`, { transaction_id: "js-ping" });
const wrongPing = await call("POST", `/_matrix/client/v1/appservice/someone-else/ping`, {});
const ghost = `@js_alice:${domain}`;
const registered = await registerGhost("js_alice");
const outside = await call("GET", "/_matrix/client/v3/account/whoami", undefined, `@alice:${domain}`);
await call("PUT", `/_matrix/client/v3/profile/${encodeURIComponent(ghost)}/displayname`, { displayname: "Alice (JS)" }, ghost);
const created = await call("POST", "/_matrix/client/v3/createRoom", { name: "JS bridge", invite: [person] }, ghost);
const roomId = created.body.room_id;
console.log("READY " + roomId);

const deadline = Date.now() + 20000;
let message;
while (!message && Date.now() < deadline) {
  message = received.find((e) => e.type === "m.room.message" && e.sender === person && e.room_id === roomId);
  if (!message) await new Promise((resolve) => setTimeout(resolve, 50));
}
let echo = null;
if (message) {
  echo = await call(
    "PUT",
    `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/echo1?ts=1200000000000`,
    { msgtype: "m.text", body: "écho: " + message.content.body },
    ghost,
  );
}
// let the typing notification the person sends after its message arrive
const typingDeadline = Date.now() + 5000;
while (!ephemeral.some((e) => e.type === "m.typing") && Date.now() < typingDeadline) {
  await new Promise((resolve) => setTimeout(resolve, 50));
}
// stay up (user queries) until the test says it is done
await new Promise((resolve) => {
  process.stdin.on("data", (chunk) => chunk.toString().includes("DONE") && resolve());
  process.stdin.on("end", resolve);
});
result({
  ping,
  wrongPing,
  registered,
  outside,
  roomId,
  queried,
  received: received.map((e) => ({ type: e.type, sender: e.sender, room_id: e.room_id, state_key: e.state_key, body: e.content?.body, membership: e.content?.membership })),
  ephemeral: ephemeral.map((e) => ({ type: e.type, room_id: e.room_id, content: e.content })),
  echo,
});
process.exit(0);
