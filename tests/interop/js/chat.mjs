// Two matrix-js-sdk users chat: create a room and invite, join, talk, edit, react, redact,
// type, read, and a second device of one of them scrolls back to the room's creation.
//
//   node chat.mjs --base-url http://127.0.0.1:8008 --alice jsalice --bob jsbob --password secret
//
// Prints one line `RESULT {json}`:
//   {"ok": bool, "sdkVersion": "...", "steps": [...], "failedStep": ..., "error": {...},
//    "roomId": "...", "sent": {"hello": "$..", "reply": .., "edit": .., "reaction": ..,
//    "mistake": .., "redaction": .., "question": .., "last": ..},
//    "views": {...what each side's SDK shows for some events...},
//    "history": [...summaries, oldest first, from the second device's scrollback...],
//    "historyComplete": bool, "forwards": [...event IDs from /messages dir=f...],
//    "users": {"alice": {"userId", "deviceId", "received": {timeline, typing, receipts,
//              redactions, membership, syncStates}}, "bob": {...}, "bobPhone": {...}}}
// Exits 0 when every step passed, 1 when one failed, 2 on the global timeout.

import { parseArgs } from "node:util";
import { Direction, Preset } from "matrix-js-sdk";
import {
    currentView,
    findEvent,
    redactionArrives,
    result,
    run,
    sawReceipt,
    sawTyping,
    startUser,
    step,
    summarise,
    until,
} from "./chat_common.mjs";

const { values: opts } = parseArgs({
    options: {
        "base-url": { type: "string" },
        "alice": { type: "string" },
        "bob": { type: "string" },
        "password": { type: "string" },
        "timeout": { type: "string", default: "60" },
    },
});

async function main() {
    const baseUrl = opts["base-url"];
    const alice = await step("alice starts", () => startUser("alice", baseUrl, opts.alice, opts.password));
    const bob = await step("bob starts", () => startUser("bob", baseUrl, opts.bob, opts.password));
    await step("display names", async () => {
        await alice.client.setDisplayName("Alice (js)");
        await bob.client.setDisplayName("Bob (js)");
    });

    const { room_id: roomId } = await step("alice creates the room", () =>
        alice.client.createRoom({
            name: "js garden",
            topic: "Roses",
            preset: Preset.PrivateChat,
            invite: [bob.userId],
        }),
    );
    result.roomId = roomId;
    const sent = (result.sent = {});

    await step("bob sees the invite", () =>
        until("bob's invite", () => bob.client.getRoom(roomId)?.getMyMembership() === "invite"),
    );
    result.inviteRoomName = bob.client.getRoom(roomId)?.name ?? null;
    await step("bob joins", () => bob.client.joinRoom(roomId));
    await step("alice sees bob join", () =>
        until("bob's join in alice's timeline", () =>
            findEvent(alice, roomId, (e) => e.type === "m.room.member" && e.stateKey === bob.userId && e.content.membership === "join"),
        ),
    );

    sent.hello = (await step("alice says hello", () =>
        alice.client.sendMessage(roomId, { msgtype: "m.text", body: "Hello Bob" }),
    )).event_id;
    await step("bob gets hello", () => until("hello at bob", () => findEvent(bob, roomId, (e) => e.eventId === sent.hello)));

    sent.reply = (await step("bob replies", () =>
        bob.client.sendMessage(roomId, {
            msgtype: "m.text",
            body: "Hi Alice",
            "m.relates_to": { "m.in_reply_to": { event_id: sent.hello } },
        }),
    )).event_id;
    await step("alice gets the reply", () =>
        until("reply at alice", () => findEvent(alice, roomId, (e) => e.eventId === sent.reply)),
    );

    sent.edit = (await step("alice edits hello", () =>
        alice.client.sendEvent(roomId, "m.room.message", {
            msgtype: "m.text",
            body: "* Hello Bob!",
            "m.new_content": { msgtype: "m.text", body: "Hello Bob!" },
            "m.relates_to": { rel_type: "m.replace", event_id: sent.hello },
        }),
    )).event_id;
    await step("bob gets the edit", () =>
        until("edit at bob", () => findEvent(bob, roomId, (e) => e.eventId === sent.edit)),
    );

    sent.reaction = (await step("bob reacts", () =>
        bob.client.sendEvent(roomId, "m.reaction", {
            "m.relates_to": { rel_type: "m.annotation", event_id: sent.hello, key: "🌹" },
        }),
    )).event_id;
    await step("alice gets the reaction", () =>
        until("reaction at alice", () => findEvent(alice, roomId, (e) => e.eventId === sent.reaction)),
    );

    sent.mistake = (await step("alice posts a mistake", () =>
        alice.client.sendMessage(roomId, { msgtype: "m.text", body: "my bank PIN is 1234" }),
    )).event_id;
    await step("bob gets the mistake", () =>
        until("mistake at bob", () => findEvent(bob, roomId, (e) => e.eventId === sent.mistake)),
    );
    sent.redaction = (await step("alice redacts it", () =>
        alice.client.redactEvent(roomId, sent.mistake, undefined, { reason: "wrong window" }),
    )).event_id;
    await step("bob gets the redaction", () =>
        redactionArrives(bob, roomId, (e) => e.eventId === sent.redaction),
    );

    await step("bob types", () => bob.client.sendTyping(roomId, true, 20000));
    await step("alice sees bob typing", () =>
        until("bob typing at alice", () => sawTyping(alice, roomId, bob.userId, true)),
    );
    await step("bob stops typing", () => bob.client.sendTyping(roomId, false, 0));
    await step("alice sees bob stop typing", () =>
        until("bob not typing at alice", () => sawTyping(alice, roomId, bob.userId, false)),
    );

    sent.question = (await step("alice asks", () =>
        alice.client.sendMessage(roomId, { msgtype: "m.text", body: "More tea?" }),
    )).event_id;
    sent.last = (await step("alice adds", () =>
        alice.client.sendMessage(roomId, { msgtype: "m.text", body: "There's plenty" }),
    )).event_id;
    const lastAtBob = await step("bob gets the last message", () =>
        until("last at bob", () => bob.client.getRoom(roomId)?.findEventById(sent.last)),
    );
    await step("bob sends a read receipt", () => bob.client.sendReadReceipt(lastAtBob));
    await step("alice sees bob's receipt", () =>
        until("bob's m.read at alice", () => sawReceipt(alice, roomId, sent.last, bob.userId)),
    );
    result.readUpTo = {
        bobAccordingToAlice: alice.client.getRoom(roomId)?.getEventReadUpTo(bob.userId) ?? null,
    };

    // What each SDK now shows for the edited and the redacted message.
    result.views = {
        helloAtBob: currentView(bob, roomId, sent.hello),
        helloAtAlice: currentView(alice, roomId, sent.hello),
        mistakeAtBob: currentView(bob, roomId, sent.mistake),
        reactionsAtAlice: (() => {
            const room = alice.client.getRoom(roomId);
            const relations = room?.relations.getChildEventsForEvent(sent.hello, "m.annotation", "m.reaction");
            return relations ? relations.getRelations().map((e) => e.getContent()["m.relates_to"].key) : null;
        })(),
    };

    // Bob's phone: a fresh device with a short initial sync scrolls back to the start.
    const phone = await step("bob's phone starts", () =>
        startUser("bobPhone", baseUrl, opts.bob, opts.password, { initialSyncLimit: 3 }),
    );
    const room = phone.client.getRoom(roomId);
    await step("bob's phone scrolls back", async () => {
        if (!room) throw new Error("the room is not in the phone's first sync");
        for (let i = 0; i < 40; i++) {
            const events = room.getLiveTimeline().getEvents();
            if (events.some((e) => e.getType() === "m.room.create")) break;
            if (room.oldState.paginationToken === null && i > 0) break;
            await phone.client.scrollback(room, 4);
        }
    });
    result.history = room ? room.getLiveTimeline().getEvents().map(summarise) : [];
    result.historyComplete = result.history.some((e) => e.type === "m.room.create");

    await step("bob's phone reads forwards", async () => {
        const forwards = [];
        let token = null;
        for (let i = 0; i < 40; i++) {
            const page = await phone.client.createMessagesRequest(roomId, token, 5, Direction.Forward);
            forwards.push(...page.chunk.map((e) => e.event_id));
            if (page.chunk.length === 0 || !page.end) break;
            token = page.end;
        }
        result.forwards = forwards;
    });
}

await run(main, Number(opts.timeout));
