// Password login with matrix-js-sdk, then whoami and getDevices (and optionally logout).
//
//   node login.mjs --base-url http://127.0.0.1:8008 --user alice --password secret \
//       [--device-name "js-sdk"] [--logout]
//
// Prints one line `RESULT {json}` on stdout, whatever happens:
//   {"ok": true|false, "steps": {"versions": ..., "loginFlows": ..., "login": ..., "whoami": ...,
//    "devices": ..., "logout": ..., "whoamiAfterLogout": ...}, "failedStep": "...", "error": {...}}
// A failed step records {errcode, httpStatus, message, data} and stops the run, except
// `whoamiAfterLogout`, which is expected to fail (M_UNKNOWN_TOKEN) and is recorded as data.
// The SDK's own logging goes to stderr so stdout stays machine-readable.

import { parseArgs } from "node:util";
import { createClient } from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

logger.setLevel("warn", false);
for (const method of ["trace", "debug", "info", "log", "warn", "error"]) {
    console[method] = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
}

const { values: opts } = parseArgs({
    options: {
        "base-url": { type: "string" },
        "user": { type: "string" },
        "password": { type: "string" },
        "device-name": { type: "string", default: "matrix-js-sdk interop" },
        "logout": { type: "boolean", default: false },
    },
});

function describeError(err) {
    return {
        name: err?.name,
        errcode: err?.errcode ?? null,
        httpStatus: err?.httpStatus ?? null,
        message: String(err?.message ?? err),
        data: err?.data ?? null,
    };
}

function emit(result) {
    process.stdout.write("RESULT " + JSON.stringify(result) + "\n");
}

const result = { ok: false, sdkVersion: null, steps: {} };

async function step(name, fn) {
    try {
        const value = await fn();
        result.steps[name] = value ?? null;
        return value;
    } catch (err) {
        result.failedStep = name;
        result.error = describeError(err);
        throw err;
    }
}

async function main() {
    const baseUrl = opts["base-url"];
    if (!baseUrl || !opts.user || !opts.password) {
        throw new Error("usage: login.mjs --base-url URL --user NAME --password PW");
    }
    // A client before login: what an app does on its sign-in screen.
    const anonymous = createClient({ baseUrl });
    await step("versions", () => anonymous.getVersions());
    await step("loginFlows", () => anonymous.loginFlows());
    const login = await step("login", () =>
        anonymous.loginRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: opts.user },
            password: opts.password,
            initial_device_display_name: opts["device-name"],
        }),
    );
    // The SDK's recommended way: a new client from the login response.
    const client = createClient({
        baseUrl,
        accessToken: login.access_token,
        userId: login.user_id,
        deviceId: login.device_id,
    });
    await step("whoami", () => client.whoami());
    await step("devices", () => client.getDevices());
    if (opts.logout) {
        await step("logout", () => client.logout());
        const stale = createClient({ baseUrl, accessToken: login.access_token, userId: login.user_id });
        try {
            result.steps.whoamiAfterLogout = { response: await stale.whoami() };
        } catch (err) {
            result.steps.whoamiAfterLogout = { error: describeError(err) };
        }
    }
    result.ok = true;
}

try {
    const pkg = await import("matrix-js-sdk/package.json", { with: { type: "json" } });
    result.sdkVersion = pkg.default.version;
} catch {
    // the version is informative only
}

try {
    await main();
} catch (err) {
    if (!result.error) {
        result.error = describeError(err);
    }
}
emit(result);
process.exit(result.ok ? 0 : 1);
