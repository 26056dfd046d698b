// One matrix-js-sdk user in a room with someone on another client (the matrix-nio user of
// test_chat_js.py), driven by what arrives through /sync: it joins on the invite, says hi,
// waits for the peer's hi, reacts to it and starts typing; waits for the peer's edit,
// redaction and typing; then reads the peer's hi, waits for the peer's receipt and for the
// peer to stop typing (which the peer does once it has seen jay type and read), stops
// typing and says bye.
//
//   node chat_peer.mjs --base-url URL --user jay --password PW --room-id '!room' --peer '@mia:hs'
//
// Prints one line `RESULT {json}` (see chat_common.mjs): besides the common keys,
//   "sent": {"hi": "$..", "reaction": "$..", "bye": "$.."}, "peerHi": "$..",
//   "views": {"nioHi": {...the SDK's current view...}, "nioMistake": {...}, "nioRedaction": {...with "redacts"}},
//   "users": {"jay": {"userId", "deviceId", "received": {...}}}
// Exits 0 when every step passed, 1 when one failed, 2 on the global timeout.

import { parseArgs } from "node:util";
import { currentView, findEvent, redactionArrives, result, run, sawReceipt, sawTyping, startUser, step, until } from "./chat_common.mjs";

const { values: opts } = parseArgs({
    options: {
        "base-url": { type: "string" },
        "user": { type: "string" },
        "password": { type: "string" },
        "room-id": { type: "string" },
        "peer": { type: "string" },
        "timeout": { type: "string", default: "60" },
    },
});
const WAIT = 30000;

async function main() {
    const roomId = opts["room-id"];
    const peer = opts.peer;
    const sent = (result.sent = {});
    const jay = await step("jay starts", () => startUser("jay", opts["base-url"], opts.user, opts.password));
    await step("jay sees the invite", () =>
        until("the invite", () => jay.client.getRoom(roomId)?.getMyMembership() === "invite", WAIT),
    );
    await step("jay joins", () => jay.client.joinRoom(roomId));
    sent.hi = (await step("jay says hi", () =>
        jay.client.sendMessage(roomId, { msgtype: "m.text", body: "hi from js" }),
    )).event_id;

    const peerHi = await step("jay gets the peer's hi", () =>
        until("the peer's hi", () =>
            findEvent(jay, roomId, (e) => e.sender === peer && e.originalContent?.body === "hi from nio"), WAIT),
    );
    result.peerHi = peerHi.eventId;
    sent.reaction = (await step("jay reacts", () =>
        jay.client.sendEvent(roomId, "m.reaction", {
            "m.relates_to": { rel_type: "m.annotation", event_id: peerHi.eventId, key: "🎉" },
        }),
    )).event_id;
    await step("jay types", () => jay.client.sendTyping(roomId, true, 20000));

    await step("jay gets the peer's edit", () =>
        until("the peer's edit", () =>
            findEvent(jay, roomId, (e) => e.relation?.rel_type === "m.replace" && e.relation?.event_id === peerHi.eventId),
            WAIT),
    );
    const redaction = await step("jay gets the peer's redaction", () =>
        redactionArrives(jay, roomId, (e) => e.sender === peer, WAIT),
    );
    await step("jay sees the peer typing", () => until("the peer typing", () => sawTyping(jay, roomId, peer, true), WAIT));
    // Read only now: the peer stops typing once it has this receipt, so jay cannot miss it typing.
    await step("jay reads the peer's hi", () =>
        jay.client.sendReadReceipt(jay.client.getRoom(roomId).findEventById(peerHi.eventId)),
    );
    await step("jay gets the peer's receipt", () =>
        until("the peer's m.read on jay's hi", () => sawReceipt(jay, roomId, sent.hi, peer), WAIT),
    );
    result.views = {
        nioHi: currentView(jay, roomId, peerHi.eventId),
        nioMistake: currentView(jay, roomId, redaction.redacts),
        nioRedaction: redaction,
    };
    // The peer stops typing once it has seen jay typing; only then may jay stop (else the
    // peer could miss jay's typing between two of its syncs).
    await step("jay sees the peer stop typing", () =>
        until("the peer to stop typing", () => {
            const changes = jay.received.typing.filter((t) => t.roomId === roomId && t.userId === peer);
            const started = changes.findIndex((t) => t.typing);
            return started >= 0 && changes.slice(started).some((t) => !t.typing);
        }, WAIT),
    );
    await step("jay stops typing", () => jay.client.sendTyping(roomId, false, 0));
    sent.bye = (await step("jay says bye", () =>
        jay.client.sendMessage(roomId, { msgtype: "m.text", body: "bye from js" }),
    )).event_id;
}

await run(main, Number(opts.timeout));
