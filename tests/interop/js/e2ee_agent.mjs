// A long-running matrix-js-sdk driver (Rust crypto) for the end-to-end encryption tests.
//
//   node e2ee_agent.mjs
//
// Python (tests/interop/e2ee_clients.py, JsAgent) writes one JSON command per line on stdin:
//   {"id": 7, "cmd": "send", "client": "alice", "roomId": "!r:hs", "body": "hello"}
// and reads one line per command on stdout:
//   REPLY {"id": 7, "ok": true, "value": {...}}
//   REPLY {"id": 7, "ok": false, "error": {"message": ..., "errcode": ..., "httpStatus": ..., "data": ...}}
// Commands run concurrently; each names the client it acts as (several clients, each its
// own device with its own Rust OlmMachine, live in this one process). The SDK's logging
// goes to stderr, which the Python side keeps in a file for failure messages.
//
// Each client's HTTP goes through a recording fetch: it remembers every /sendToDevice
// request's targets (not the ciphertext) and the one-time/fallback key fields of every
// /sync response, and can hold back /keys/upload (so a test can watch the fallback key
// at work without the client quietly replenishing its one-time keys).

import { createInterface } from "node:readline";
import { createClient, ClientEvent, MatrixEventEvent } from "matrix-js-sdk";
import {
    CryptoEvent,
    VerificationPhase,
    VerificationRequestEvent,
    VerifierEvent,
    decodeRecoveryKey,
} from "matrix-js-sdk/lib/crypto-api/index.js";
import { logger } from "matrix-js-sdk/lib/logger.js";

logger.setLevel(process.env.E2EE_AGENT_LOG_LEVEL || "info", false);
for (const method of ["trace", "debug", "info", "log", "warn", "error"]) {
    console[method] = (...args) => process.stderr.write(`[${method}] ` + args.map(String).join(" ") + "\n");
}

const clients = new Map(); // name -> state

function describeError(err) {
    return {
        name: err?.name ?? null,
        errcode: err?.errcode ?? null,
        httpStatus: err?.httpStatus ?? null,
        message: String(err?.message ?? err),
        data: err?.data ?? null,
        stack: err?.stack ? String(err.stack).split("\n").slice(0, 6).join("\n") : null,
    };
}

function reply(message) {
    process.stdout.write("REPLY " + JSON.stringify(message) + "\n");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(what, check, timeoutMs = 20000, intervalMs = 100) {
    const deadline = Date.now() + timeoutMs;
    let last;
    for (;;) {
        last = await check();
        if (last) return last;
        if (Date.now() > deadline) {
            throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
        }
        await sleep(intervalMs);
    }
}

function state(name) {
    const s = clients.get(name);
    if (!s) throw new Error(`no client named ${JSON.stringify(name)}`);
    return s;
}

// ------------------------------------------------------------------ the recording fetch

function recordingFetch(s) {
    return async (input, init = {}) => {
        const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
        const method = (init.method || "GET").toUpperCase();
        const path = new URL(url).pathname;
        if (method === "POST" && path.endsWith("/keys/upload") && s.holdKeyUploads) {
            s.heldKeyUploads += 1;
            // What a flaky network gives: the SDK logs it and retries after a later sync.
            return new Response(JSON.stringify({ errcode: "M_UNKNOWN", error: "held back by the test" }), {
                status: 503,
                headers: { "Content-Type": "application/json" },
            });
        }
        let keyUpload = null;
        if (method === "POST" && path.endsWith("/keys/upload") && init.body) {
            try {
                const body = JSON.parse(init.body);
                keyUpload = {
                    deviceKeys: Boolean(body.device_keys),
                    oneTimeKeys: Object.keys(body.one_time_keys || {}).length,
                    fallbackKeys: Object.keys(body.fallback_keys || {}),
                };
            } catch {
                // not JSON: nothing to record
            }
        }
        if (method === "PUT" && path.includes("/sendToDevice/") && init.body) {
            const parts = path.split("/");
            const eventType = decodeURIComponent(parts[parts.length - 2]);
            try {
                const body = JSON.parse(init.body);
                const targets = [];
                for (const [userId, devices] of Object.entries(body.messages || {})) {
                    for (const deviceId of Object.keys(devices)) targets.push([userId, deviceId]);
                }
                s.toDevice.push({ eventType, targets, at: Date.now() });
            } catch {
                // not JSON: nothing to record
            }
        }
        const response = await fetch(input, init);
        if (keyUpload && response.ok) {
            // Recorded once the server has accepted the keys, so a test can rely on them.
            keyUpload.counts = (await response.clone().json()).one_time_key_counts ?? null;
            s.keyUploads.push(keyUpload);
        }
        if (method === "GET" && path.endsWith("/sync") && response.ok) {
            try {
                const body = await response.clone().json();
                s.syncs.push({
                    at: Date.now(),
                    oneTimeKeysCount: body.device_one_time_keys_count ?? null,
                    unusedFallbackKeyTypes: body.device_unused_fallback_key_types ?? null,
                    deviceListsChanged: body.device_lists?.changed ?? [],
                    deviceListsLeft: body.device_lists?.left ?? [],
                    toDeviceTypes: (body.to_device?.events ?? []).map((e) => e.type),
                });
                if (s.syncs.length > 500) s.syncs.splice(0, s.syncs.length - 500);
            } catch {
                // an unparsable /sync is the SDK's problem to report
            }
        }
        return response;
    };
}

// ------------------------------------------------------------------ helpers on events

async function describeEvent(s, event) {
    const crypto = s.client.getCrypto();
    let shield = null;
    if (event.isEncrypted() && !event.isDecryptionFailure()) {
        try {
            const info = await crypto.getEncryptionInfoForEvent(event);
            shield = info ? { colour: info.shieldColour, reason: info.shieldReason } : null;
        } catch (err) {
            shield = { error: String(err) };
        }
    }
    return {
        eventId: event.getId(),
        sender: event.getSender(),
        type: event.getType(),
        wireType: event.getWireType(),
        encrypted: event.isEncrypted(),
        decryptionFailure: event.isDecryptionFailure(),
        decryptionFailureReason: event.decryptionFailureReason ?? null,
        body: event.getContent()?.body ?? null,
        sessionId: event.isEncrypted() ? event.getWireContent()?.session_id ?? null : null,
        senderCurve25519: event.isEncrypted() ? event.getSenderKey() ?? null : null,
        shield,
    };
}

function timelineEvents(s, roomId) {
    const room = s.client.getRoom(roomId);
    if (!room) return [];
    return room.getLiveTimeline().getEvents();
}

async function uiAuth(s, makeRequest) {
    // User-interactive auth for /keys/device_signing/upload: try without auth (the first
    // upload needs none), then answer the 401 with the password stage.
    try {
        return await makeRequest(null);
    } catch (err) {
        if (err?.httpStatus !== 401 || !err?.data?.flows) throw err;
        s.uiaChallenges.push(err.data);
        return await makeRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: s.userId },
            password: s.password,
            session: err.data.session,
        });
    }
}

// ------------------------------------------------------------------ commands

const commands = {
    async login({ client: name, baseUrl, user, password, deviceName, recoveryKey }) {
        if (clients.has(name)) throw new Error(`client ${name} exists already`);
        const s = {
            name,
            password,
            holdKeyUploads: false,
            heldKeyUploads: 0,
            keyUploads: [],
            toDevice: [],
            syncs: [],
            secretStorageKeys: new Map(), // key id -> private key (Uint8Array)
            recoveryKey: recoveryKey ?? null,
            verifications: [],
            uiaChallenges: [], // the 401 bodies that user-interactive auth answered
        };
        clients.set(name, s);
        const anonymous = createClient({ baseUrl, fetchFn: recordingFetch(s) });
        const login = await anonymous.loginRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user },
            password,
            initial_device_display_name: deviceName ?? `${name} (matrix-js-sdk)`,
        });
        s.userId = login.user_id;
        s.deviceId = login.device_id;
        s.accessToken = login.access_token;
        s.client = createClient({
            baseUrl,
            accessToken: login.access_token,
            userId: login.user_id,
            deviceId: login.device_id,
            fetchFn: recordingFetch(s),
            cryptoCallbacks: {
                getSecretStorageKey: async ({ keys }) => {
                    for (const keyId of Object.keys(keys)) {
                        if (s.secretStorageKeys.has(keyId)) return [keyId, s.secretStorageKeys.get(keyId)];
                    }
                    if (s.recoveryKey) {
                        const keyId = Object.keys(keys)[0];
                        return [keyId, decodeRecoveryKey(s.recoveryKey)];
                    }
                    return null;
                },
                cacheSecretStorageKey: (keyId, _keyInfo, key) => {
                    s.secretStorageKeys.set(keyId, key);
                },
            },
        });
        await s.client.initRustCrypto({ useIndexedDB: false });
        s.client.on(CryptoEvent.VerificationRequestReceived, (request) => {
            s.verifications.push(request);
        });
        const prepared = new Promise((resolve, reject) => {
            s.client.on(ClientEvent.Sync, (syncState, _prev, data) => {
                if (syncState === "PREPARED" || syncState === "SYNCING") resolve();
                if (syncState === "ERROR") s.lastSyncError = describeError(data?.error);
            });
            setTimeout(() => reject(new Error("no PREPARED sync within 30 s: " + JSON.stringify(s.lastSyncError))), 30000);
        });
        await s.client.startClient({ initialSyncLimit: 30, lazyLoadMembers: false });
        await prepared;
        // The device keys are uploaded by the crypto's outgoing-request loop after the first sync.
        await waitFor("the device keys to be uploaded", () => s.keyUploads.some((u) => u.deviceKeys), 20000);
        const keys = await s.client.getCrypto().getOwnDeviceKeys();
        return { userId: s.userId, deviceId: s.deviceId, accessToken: s.accessToken, ...keys };
    },

    async createRoom({ client: name, invite = [], encrypted = true, name: roomName }) {
        const s = state(name);
        const initial_state = encrypted
            ? [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }]
            : [];
        const { room_id } = await s.client.createRoom({ invite, initial_state, name: roomName, preset: "private_chat" });
        await waitFor(`room ${room_id} in the client`, () => s.client.getRoom(room_id)?.getMyMembership() === "join");
        return { roomId: room_id };
    },

    async join({ client: name, roomId, waitInvite = true }) {
        const s = state(name);
        if (waitInvite) {
            await waitFor(`an invite to ${roomId}`, () => s.client.getRoom(roomId)?.getMyMembership() === "invite");
        }
        await s.client.joinRoom(roomId);
        await waitFor(`${roomId} joined`, () => s.client.getRoom(roomId)?.getMyMembership() === "join");
        return {};
    },

    async waitMember({ client: name, roomId, userId, membership = "join", timeoutMs = 20000 }) {
        const s = state(name);
        await waitFor(
            `${userId} to be ${membership} in ${roomId}`,
            () => s.client.getRoom(roomId)?.getMember(userId)?.membership === membership,
            timeoutMs,
        );
        return {};
    },

    async send({ client: name, roomId, body }) {
        const s = state(name);
        // Never let a test message go out in clear: the room must be encrypted here first.
        await waitFor(`${roomId} to be encrypted`, async () => s.client.getCrypto().isEncryptionEnabledInRoom(roomId));
        const { event_id } = await s.client.sendMessage(roomId, { msgtype: "m.text", body });
        return { eventId: event_id };
    },

    async waitMessage({ client: name, roomId, marker, timeoutMs = 20000 }) {
        const s = state(name);
        let seen = [];
        try {
            const found = await waitFor(
                `a decrypted message containing ${JSON.stringify(marker)}`,
                async () => {
                    const events = timelineEvents(s, roomId);
                    seen = events;
                    for (const event of events) {
                        if (event.getType() === "m.room.message" && String(event.getContent()?.body ?? "").includes(marker)) {
                            return event;
                        }
                    }
                    return null;
                },
                timeoutMs,
            );
            return await describeEvent(s, found);
        } catch (err) {
            const described = [];
            for (const event of seen.slice(-15)) described.push(await describeEvent(s, event));
            err.data = { timeline: described };
            throw err;
        }
    },

    async scrollback({ client: name, roomId, limit = 50 }) {
        const s = state(name);
        const room = s.client.getRoom(roomId);
        await s.client.scrollback(room, limit);
        return { count: room.getLiveTimeline().getEvents().length };
    },

    async timeline({ client: name, roomId }) {
        const s = state(name);
        const out = [];
        for (const event of timelineEvents(s, roomId)) out.push(await describeEvent(s, event));
        return { events: out };
    },

    async devices({ client: name, userId, download = true }) {
        const s = state(name);
        const map = await s.client.getCrypto().getUserDeviceInfo([userId], download);
        return { deviceIds: [...(map.get(userId)?.keys() ?? [])] };
    },

    async waitDevices({ client: name, userId, present = [], absent = [], timeoutMs = 20000 }) {
        const s = state(name);
        let ids = [];
        try {
            await waitFor(
                `${userId}'s devices to include ${present} and exclude ${absent}`,
                async () => {
                    const map = await s.client.getCrypto().getUserDeviceInfo([userId], false);
                    ids = [...(map.get(userId)?.keys() ?? [])];
                    return present.every((d) => ids.includes(d)) && absent.every((d) => !ids.includes(d));
                },
                timeoutMs,
                200,
            );
        } catch (err) {
            err.data = { deviceIds: ids, recentSyncDeviceLists: s.syncs.slice(-10) };
            throw err;
        }
        return { deviceIds: ids };
    },

    async records({ client: name }) {
        const s = state(name);
        return {
            toDevice: s.toDevice,
            syncs: s.syncs.slice(-50),
            keyUploads: s.keyUploads,
            heldKeyUploads: s.heldKeyUploads,
        };
    },

    async holdKeyUploads({ client: name, hold }) {
        const s = state(name);
        s.holdKeyUploads = Boolean(hold);
        return { heldSoFar: s.heldKeyUploads };
    },

    async waitKeyUpload({ client: name, after = 0, fallback = false, timeoutMs = 20000 }) {
        // Wait for a /keys/upload (the index-th or later) carrying one-time keys (or a fallback key).
        const s = state(name);
        const upload = await waitFor(
            "a /keys/upload with new keys",
            () => s.keyUploads.slice(after).find((u) => (fallback ? u.fallbackKeys.length > 0 : u.oneTimeKeys > 0)),
            timeoutMs,
        );
        return upload;
    },

    async bootstrapCrossSigning({ client: name }) {
        const s = state(name);
        const crypto = s.client.getCrypto();
        const challengesBefore = s.uiaChallenges.length;
        await crypto.bootstrapCrossSigning({
            authUploadDeviceSigningKeys: (makeRequest) => uiAuth(s, makeRequest),
        });
        return {
            ready: await crypto.isCrossSigningReady(),
            status: await crypto.getCrossSigningStatus(),
            uiaChallenges: s.uiaChallenges.slice(challengesBefore),
        };
    },

    async bootstrapSecretStorage({ client: name }) {
        // What "Set up recovery" does in Element: a recovery key, secret storage holding the
        // cross-signing keys and the key-backup key, and a new server-side key backup.
        const s = state(name);
        const crypto = s.client.getCrypto();
        let recoveryKey = null;
        await crypto.bootstrapSecretStorage({
            createSecretStorageKey: async () => {
                const generated = await crypto.createRecoveryKeyFromPassphrase();
                recoveryKey = generated.encodedPrivateKey;
                s.recoveryKey = recoveryKey;
                return generated;
            },
            setupNewSecretStorage: true,
            setupNewKeyBackup: true,
        });
        const backup = await crypto.checkKeyBackupAndEnable();
        return {
            recoveryKey,
            secretStorageReady: await crypto.isSecretStorageReady(),
            backupVersion: backup?.backupInfo?.version ?? null,
            backupTrusted: backup?.trustInfo ?? null,
            activeBackupVersion: await crypto.getActiveSessionBackupVersion(),
        };
    },

    async waitBackupActive({ client: name, timeoutMs = 20000 }) {
        const s = state(name);
        const version = await waitFor(
            "an active key backup",
            async () => s.client.getCrypto().getActiveSessionBackupVersion(),
            timeoutMs,
            200,
        );
        return { version };
    },

    async restoreFromRecoveryKey({ client: name, recoveryKey }) {
        // What "Verify with recovery key" does on a new login: fetch the cross-signing keys
        // from secret storage (signing this device), then the backup key, then restore.
        const s = state(name);
        s.recoveryKey = recoveryKey;
        const crypto = s.client.getCrypto();
        // Importing the private keys needs the public ones first (a fresh device may not
        // have fetched its own user's keys yet).
        await waitFor("this user's public cross-signing keys", async () => {
            await crypto.userHasCrossSigningKeys(s.userId, true);
            return (await crypto.getCrossSigningStatus()).publicKeysOnDevice;
        });
        await crypto.bootstrapCrossSigning({
            authUploadDeviceSigningKeys: (makeRequest) => uiAuth(s, makeRequest),
        });
        await crypto.loadSessionBackupPrivateKeyFromSecretStorage();
        const check = await crypto.checkKeyBackupAndEnable();
        const restored = await crypto.restoreKeyBackup();
        return {
            crossSigningReady: await crypto.isCrossSigningReady(),
            crossSigningStatus: await crypto.getCrossSigningStatus(),
            backupVersion: check?.backupInfo?.version ?? null,
            backupTrusted: check?.trustInfo ?? null,
            restored,
        };
    },

    async userVerification({ client: name, userId }) {
        const s = state(name);
        const status = await s.client.getCrypto().getUserVerificationStatus(userId);
        return {
            isVerified: status.isVerified(),
            isCrossSigningVerified: status.isCrossSigningVerified(),
            wasCrossSigningVerified: status.wasCrossSigningVerified(),
        };
    },

    async waitUserVerified({ client: name, userId, timeoutMs = 20000 }) {
        const s = state(name);
        await waitFor(
            `${userId} cross-signing verified`,
            async () => (await s.client.getCrypto().getUserVerificationStatus(userId)).isCrossSigningVerified(),
            timeoutMs,
            200,
        );
        return commands.userVerification({ client: name, userId });
    },

    async deviceVerification({ client: name, userId, deviceId, download = false }) {
        const s = state(name);
        if (download) await s.client.getCrypto().getUserDeviceInfo([userId], true);
        const status = await s.client.getCrypto().getDeviceVerificationStatus(userId, deviceId);
        if (!status) return null;
        return {
            isVerified: status.isVerified(),
            crossSigningVerified: status.crossSigningVerified,
            signedByOwner: status.signedByOwner,
            localVerified: status.localVerified,
        };
    },

    async waitDeviceCrossSigned({ client: name, userId, deviceId, timeoutMs = 20000 }) {
        const s = state(name);
        await waitFor(
            `${userId}'s device ${deviceId} to be cross-signing verified`,
            async () => {
                await s.client.getCrypto().getUserDeviceInfo([userId], false);
                const status = await s.client.getCrypto().getDeviceVerificationStatus(userId, deviceId);
                return status?.crossSigningVerified;
            },
            timeoutMs,
            250,
        );
        return commands.deviceVerification({ client: name, userId, deviceId });
    },

    async sasVerify({ client: name, other }) {
        // Interactive SAS verification (to-device) between two clients of this process,
        // both sides confirming that the emoji match, as two people would.
        const a = state(name);
        const b = state(other);
        const already = b.verifications.length;
        await a.client.getCrypto().getUserDeviceInfo([b.userId], true);
        await b.client.getCrypto().getUserDeviceInfo([a.userId], true);
        const requestA = await a.client.getCrypto().requestDeviceVerification(b.userId, b.deviceId);
        const requestB = await waitFor(`${other} to receive the verification request`, () => b.verifications[already]);
        await requestB.accept();
        await waitFor("the request to be ready", () => requestA.phase === VerificationPhase.Ready);
        const sas = {};
        const runSide = async (label, verifier) => {
            verifier.on(VerifierEvent.ShowSas, (callbacks) => {
                sas[label] = callbacks.sas.emoji?.map((e) => e[1]) ?? callbacks.sas.decimal;
                callbacks.confirm();
            });
            await verifier.verify();
        };
        const verifierA = await requestA.startVerification("m.sas.v1");
        const verifierB = await waitFor("the other side's verifier", () => requestB.verifier);
        await Promise.all([runSide(a.name, verifierA), runSide(b.name, verifierB)]);
        await waitFor("both requests done", () => requestA.phase === VerificationPhase.Done && requestB.phase === VerificationPhase.Done);
        return { sas };
    },

    async stop({ client: name }) {
        const s = state(name);
        s.client.stopClient();
        clients.delete(name);
        return {};
    },

    async exit() {
        for (const s of clients.values()) s.client?.stopClient();
        setTimeout(() => process.exit(0), 50);
        return {};
    },
};

const input = createInterface({ input: process.stdin });
input.on("line", (line) => {
    if (!line.trim()) return;
    let message;
    try {
        message = JSON.parse(line);
    } catch (err) {
        reply({ id: null, ok: false, error: describeError(err) });
        return;
    }
    const { id, cmd, ...args } = message;
    const handler = commands[cmd];
    if (!handler) {
        reply({ id, ok: false, error: { message: `unknown command ${cmd}` } });
        return;
    }
    process.stderr.write(`--- command ${id} ${cmd} ${args.client ?? ""}\n`);
    handler(args).then(
        (value) => reply({ id, ok: true, value: value ?? null }),
        (err) => {
            process.stderr.write(`--- command ${id} ${cmd} failed: ${err?.stack ?? err}\n`);
            reply({ id, ok: false, error: describeError(err) });
        },
    );
});
input.on("close", () => {
    for (const s of clients.values()) s.client?.stopClient();
    setTimeout(() => process.exit(0), 50);
});
reply({ id: 0, ok: true, value: { ready: true } });
