// Shared by chat.mjs and chat_peer.mjs: a signed-in, syncing matrix-js-sdk client that
// records what it receives, plus the RESULT / timeout plumbing of the interop scripts.
//
// Every script prints exactly one `RESULT {json}` line on stdout, whatever happens (also
// on its global timeout, after which it exits 2). The SDK's own logging goes to stderr.

import {
    ClientEvent,
    RoomEvent,
    RoomMemberEvent,
    SyncState,
    createClient,
} from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

logger.setLevel("warn", false);
for (const method of ["trace", "debug", "info", "log", "warn", "error"]) {
    console[method] = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
}

export const result = { ok: false, sdkVersion: null, steps: [], failedStep: null, error: null };

try {
    const pkg = await import("matrix-js-sdk/package.json", { with: { type: "json" } });
    result.sdkVersion = pkg.default.version;
} catch {
    // informative only
}

export function describeError(err) {
    return {
        name: err?.name,
        errcode: err?.errcode ?? null,
        httpStatus: err?.httpStatus ?? null,
        message: String(err?.message ?? err),
        data: err?.data ?? null,
    };
}

let emitted = false;
export function emit() {
    if (!emitted) {
        emitted = true;
        process.stdout.write("RESULT " + JSON.stringify(result) + "\n");
    }
}

/** Exit non-zero with a RESULT line if the whole script takes longer than `seconds`. */
export function globalTimeout(seconds, clients) {
    return setTimeout(() => {
        result.ok = false;
        result.error = result.error ?? { message: `global timeout: the script did not finish within ${seconds}s` };
        result.failedStep = result.failedStep ?? result.steps.at(-1) ?? null;
        for (const c of clients) snapshot(c);
        emit();
        process.exit(2);
    }, seconds * 1000);
}

/** Record a named step; on failure remember which step and why, and rethrow. */
export async function step(name, fn) {
    result.steps.push(name);
    try {
        return await fn();
    } catch (err) {
        result.failedStep = result.failedStep ?? name;
        result.error = result.error ?? describeError(err);
        throw err;
    }
}

/** Poll `check()` until it returns a truthy value; throw naming `what` after `ms`. */
export async function until(what, check, ms = 15000) {
    const deadline = Date.now() + ms;
    for (;;) {
        const found = check();
        if (found) return found;
        if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
    }
}

export function summarise(event) {
    return {
        eventId: event.getId(),
        type: event.getType(),
        sender: event.getSender(),
        stateKey: event.getStateKey() ?? null,
        content: event.getContent(),
        originalContent: event.getOriginalContent(),
        redacted: event.isRedacted(),
        replacingEventId: event.replacingEventId() ?? null,
        relation: event.getRelation() ?? null,
        topLevelRedacts: event.event.redacts ?? null, // room versions 1-10; servers copy it for older clients
    };
}

/**
 * Log in with a password and start syncing; resolves once the first sync is PREPARED.
 * `received` collects what the client's listeners saw: timeline events, typing changes,
 * receipts (raw m.receipt content), redactions, membership changes.
 */
export async function startUser(name, baseUrl, user, password, { initialSyncLimit = 20 } = {}) {
    const anonymous = createClient({ baseUrl });
    const login = await anonymous.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user },
        password,
        initial_device_display_name: `${name} js-sdk`,
    });
    const client = createClient({
        baseUrl,
        accessToken: login.access_token,
        userId: login.user_id,
        deviceId: login.device_id,
    });
    const received = { timeline: [], typing: [], receipts: [], redactions: [], membership: [], syncStates: [] };
    client.on(RoomEvent.Timeline, (event, room, toStartOfTimeline, removed, data) => {
        received.timeline.push({
            roomId: room?.roomId ?? null,
            live: Boolean(data?.liveEvent),
            toStart: Boolean(toStartOfTimeline),
            ...summarise(event),
        });
    });
    client.on(RoomMemberEvent.Typing, (event, member) => {
        received.typing.push({ roomId: member.roomId, userId: member.userId, typing: member.typing });
    });
    client.on(RoomEvent.Receipt, (event, room) => {
        received.receipts.push({ roomId: room.roomId, content: event.getContent() });
    });
    client.on(RoomEvent.Redaction, (event, room) => {
        received.redactions.push({ roomId: room.roomId, eventId: event.getId(), redacts: event.getAssociatedId() });
    });
    client.on(RoomMemberEvent.Membership, (event, member, oldMembership) => {
        received.membership.push({
            roomId: member.roomId,
            userId: member.userId,
            membership: member.membership,
            oldMembership: oldMembership ?? null,
        });
    });
    const prepared = new Promise((resolve, reject) => {
        client.on(ClientEvent.Sync, (state, prevState, data) => {
            received.syncStates.push(state);
            if (state === SyncState.Prepared) resolve();
            if (state === SyncState.Error && !received.syncStates.includes(SyncState.Prepared)) {
                reject(new Error(`first sync failed: ${String(data?.error?.message ?? data?.error)}`));
            }
        });
    });
    await client.startClient({ initialSyncLimit });
    await prepared;
    const who = { name, client, userId: login.user_id, deviceId: login.device_id, received };
    startedUsers.push(who);
    return who;
}

const startedUsers = [];

/** Copy what a user received into the result (called at the end and on timeout). */
export function snapshot(who) {
    result.users = result.users ?? {};
    result.users[who.name] = { userId: who.userId, deviceId: who.deviceId, received: who.received };
}

export function liveEvents(who, roomId) {
    return who.received.timeline.filter((e) => e.roomId === roomId);
}

export function findEvent(who, roomId, predicate) {
    return liveEvents(who, roomId).find(predicate);
}

/** The current view the SDK has of an event in a room (edits applied, redactions shown). */
export function currentView(who, roomId, eventId) {
    const event = who.client.getRoom(roomId)?.findEventById(eventId);
    return event ? summarise(event) : null;
}

/** Whether `userId`'s receipt of `type` on `eventId` arrived (raw m.receipt content). */
export function sawReceipt(who, roomId, eventId, userId, type = "m.read") {
    return who.received.receipts.some(
        (r) => r.roomId === roomId && r.content?.[eventId]?.[type]?.[userId] !== undefined,
    );
}

/** Wait for a redaction event in the timeline, then briefly for the SDK to apply it. */
export async function redactionArrives(who, roomId, match, ms = 15000) {
    const event = await until("the redaction event in the timeline", () =>
        findEvent(who, roomId, (e) => e.type === "m.room.redaction" && match(e)), ms);
    const redacts = event.content.redacts ?? event.topLevelRedacts;
    try {
        await until("RoomEvent.Redaction", () =>
            who.received.redactions.find((r) => r.roomId === roomId && r.eventId === event.eventId), 2000);
    } catch {
        // recorded (or not) in received.redactions; the Python side asserts on it
    }
    return { ...event, redacts };
}

export function sawTyping(who, roomId, userId, typing) {
    return who.received.typing.some((t) => t.roomId === roomId && t.userId === userId && t.typing === typing);
}

export function stopAll() {
    for (const who of startedUsers) {
        snapshot(who);
        who.client.stopClient();
    }
}

/** Run `main`, then print RESULT and exit (0 on success, 1 on failure). */
export async function run(main, seconds) {
    const timer = globalTimeout(seconds, startedUsers);
    try {
        await main();
        result.ok = true;
    } catch (err) {
        result.error = result.error ?? describeError(err);
    }
    clearTimeout(timer);
    stopAll();
    emit();
    process.exit(result.ok ? 0 : 1);
}
