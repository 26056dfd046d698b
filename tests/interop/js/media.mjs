// Media with matrix-js-sdk: upload files, download files and thumbnails through the
// authenticated /_matrix/client/v1/media endpoints, and try them without a token.
//
//   node media.mjs --base-url http://127.0.0.1:8008 --user alice --password secret \
//       --plan plan.json [--timeout 60]
//
// plan.json:
//   {"uploads": [{"path": "/tmp/cat.png", "type": "image/png", "name": "cat.png"}],
//    "downloads": [{"mxc": "mxc://...", "out": "/tmp/got.bin",
//                   "thumbnail": {"width": 96, "height": 96, "method": "crop"} | null}],
//    "unauthenticated": [{"mxc": "mxc://...", "thumbnail": {...} | null}]}
//
// Prints one `RESULT {json}` line: {"ok", "uploads": [{"mxc"}], "downloads": [{"url",
// "status", "contentType", "contentDisposition", "length"}], "unauthenticated": [{"url",
// "status", "body"}], "mediaConfig"}. Downloaded bytes are written to each "out" path.

import { readFile, writeFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import { createClient } from "matrix-js-sdk";

import { emit, globalTimeout, result, step } from "./chat_common.mjs";

const { values: opts } = parseArgs({
    options: {
        "base-url": { type: "string" },
        "user": { type: "string" },
        "password": { type: "string" },
        "plan": { type: "string" },
        "timeout": { type: "string", default: "60" },
    },
});

function mediaUrl(client, item, useAuthentication) {
    const t = item.thumbnail;
    const url = t
        ? client.mxcUrlToHttp(item.mxc, t.width, t.height, t.method, false, true, useAuthentication)
        : client.mxcUrlToHttp(item.mxc, undefined, undefined, undefined, false, true, useAuthentication);
    if (!url) throw new Error(`the SDK made no URL for ${item.mxc}`);
    return url;
}

async function main() {
    const baseUrl = opts["base-url"];
    const plan = JSON.parse(await readFile(opts.plan, "utf8"));
    const anonymous = createClient({ baseUrl });
    const login = await step("login", () =>
        anonymous.loginRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: opts.user },
            password: opts.password,
        }),
    );
    const client = createClient({ baseUrl, accessToken: login.access_token, userId: login.user_id });
    result.mediaConfig = await step("mediaConfig", () => client.getMediaConfig(true));

    result.uploads = [];
    for (const upload of plan.uploads ?? []) {
        const data = await readFile(upload.path);
        const sent = await step(`upload ${upload.name}`, () =>
            client.uploadContent(data, { name: upload.name, type: upload.type }),
        );
        result.uploads.push({ mxc: sent.content_uri });
    }

    result.downloads = [];
    for (const item of plan.downloads ?? []) {
        const url = mediaUrl(client, item, true);
        const response = await step(`download ${item.mxc}`, () =>
            fetch(url, { headers: { Authorization: `Bearer ${login.access_token}` } }),
        );
        const body = Buffer.from(await response.arrayBuffer());
        await writeFile(item.out, body);
        result.downloads.push({
            url,
            status: response.status,
            contentType: response.headers.get("content-type"),
            contentDisposition: response.headers.get("content-disposition"),
            length: body.length,
        });
    }

    result.unauthenticated = [];
    for (const item of plan.unauthenticated ?? []) {
        const url = mediaUrl(client, item, true);
        const response = await step(`anonymous ${item.mxc}`, () => fetch(url));
        const text = await response.text();
        let body = text;
        try {
            body = JSON.parse(text);
        } catch {
            // not JSON: kept as text for the assertion message
        }
        result.unauthenticated.push({ url, status: response.status, body });
    }
    result.ok = true;
}

const timer = globalTimeout(Number(opts.timeout), []);
try {
    await main();
} catch (err) {
    result.ok = false;
}
clearTimeout(timer);
emit();
process.exit(result.ok ? 0 : 1);
