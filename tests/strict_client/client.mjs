// A strict end-to-end encrypted Matrix client for the integration tests:
// matrix-js-sdk with its Rust crypto (in memory), cross-signing bootstrapped as
// Element does at first login, and "exclude insecure devices" (MSC4153,
// OnlySignedDevicesIsolationMode). Driven by tests/strict_client.py.
//
// Protocol: one JSON object per line. Requests on stdin
//   {"id": n, "op": "...", ...arguments}
// answers on stdout
//   {"id": n, "ok": true, "result": ...} or {"id": n, "ok": false, "error": "..."}
// Requests run concurrently (a long wait does not block the others). stdout is
// the RPC channel only: every console method, and with it matrix-js-sdk's
// logger (which looks the console methods up at each call), writes to stderr.
// End of stdin stops the client and exits.

import { Console } from "node:console";
import { webcrypto } from "node:crypto";
import { createInterface } from "node:readline";

// Node 18 (Debian bookworm's nodejs) has no global Web Crypto; the SDK uses
// globalThis.crypto (getRandomValues, subtle) from its first createClient.
if (!globalThis.crypto) globalThis.crypto = webcrypto;

const stderrConsole = new Console({ stdout: process.stderr, stderr: process.stderr });
for (const method of ["log", "info", "debug", "warn", "error", "trace", "dir"]) {
    console[method] = stderrConsole[method].bind(stderrConsole);
}

// Imported after the console is redirected: the SDK and the WASM module log at load time.
const sdk = await import("matrix-js-sdk");
const { logger } = await import("matrix-js-sdk/lib/logger.js");
const cryptoApi = await import("matrix-js-sdk/lib/crypto-api/index.js");
// the same module instance as the SDK's (one copy in node_modules): its UserId for the OlmMachine
const { UserId } = await import("@matrix-org/matrix-sdk-crypto-wasm");

logger.setLevel(process.env.STRICT_CLIENT_LOG_LEVEL || "info", false);

const { ClientEvent, RoomEvent, SyncState } = sdk;
const {
    AllDevicesIsolationMode,
    OnlySignedDevicesIsolationMode,
    EventShieldColour,
    EventShieldReason,
} = cryptoApi;

const POLL_MS = 100;

/** @type {import("matrix-js-sdk").MatrixClient | null} */
let client = null;
let isolation = "all";
/** roomId -> Map(MatrixEvent -> true), in the order they arrived */
const seen = new Map();

function send(message) {
    process.stdout.write(`${JSON.stringify(message)}\n`);
}

function describeError(error, withStack = false) {
    if (error && typeof error === "object") {
        const parts = [(withStack && error.stack) || String(error)];
        if (error.httpStatus) parts.push(`HTTP ${error.httpStatus}`);
        if (error.data && Object.keys(error.data).length) parts.push(`body ${JSON.stringify(error.data)}`);
        return parts.join("; ");
    }
    return String(error);
}

function need(args, ...names) {
    for (const name of names) {
        if (args[name] === undefined || args[name] === null) throw new Error(`argument '${name}' is missing`);
    }
}

function requireClient() {
    if (!client) throw new Error("not logged in (call login first)");
    return client;
}

/** Resolves with the first truthy value of `check()` (sync or async), polled
 * every POLL_MS; rejects after timeoutMs naming `what` and the last state. */
async function waitUntil(check, timeoutMs, what, lastState = () => "") {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const value = await check();
        if (value) return value;
        if (Date.now() > deadline) {
            const state = await lastState();
            throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${state ? `; ${state}` : ""}`);
        }
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
}

function record(roomId, event) {
    if (!seen.has(roomId)) seen.set(roomId, new Map());
    seen.get(roomId).set(event, true);
}

function settled(event) {
    return !event.isBeingDecrypted() && !event.shouldAttemptDecryption();
}

/** Timeline events of a room that are messages (or could be: undecryptable ones),
 * sent (no local echo still pending), in arrival order. */
function roomMessages(roomId, type = "m.room.message") {
    const room = client.getRoom(roomId);
    const events = new Map(seen.get(roomId) || []);
    for (const event of room ? room.getLiveTimeline().getEvents() : []) events.set(event, true);
    return [...events.keys()].filter((event) => {
        if (event.isState() || event.status !== null) return false;
        const id = event.getId();
        if (!id || id.startsWith("~")) return false;
        // an encrypted event whose decryption is pending has type m.room.encrypted: left out until settled
        return event.getType() === type || event.isDecryptionFailure();
    });
}

async function describe(event) {
    const failed = event.isDecryptionFailure();
    const encrypted = event.isEncrypted();
    let shield = null;
    if (encrypted && !failed && settled(event)) {
        const info = await client.getCrypto().getEncryptionInfoForEvent(event);
        if (info) {
            shield = {
                colour: EventShieldColour[info.shieldColour],
                reason: info.shieldReason === null ? null : EventShieldReason[info.shieldReason],
            };
        }
    }
    const content = event.getContent();
    return {
        event_id: event.getId(),
        sender: event.getSender(),
        type: event.getType(),
        body: failed ? null : (content.body ?? null),
        content: failed ? null : content,
        encrypted,
        decrypted: encrypted && settled(event) && !failed,
        decryption_error: failed ? (event.decryptionFailureReason ?? "UNKNOWN_ERROR") : null,
        shield,
        origin_server_ts: event.getTs(),
    };
}

function membershipOf(roomId, userId) {
    const room = client.getRoom(roomId);
    if (!room) return null;
    if (userId === client.getUserId()) return room.getMyMembership();
    return room.getMember(userId)?.membership ?? null;
}

function setIsolation(mode) {
    const crypto = requireClient().getCrypto();
    if (mode === "only_signed") crypto.setDeviceIsolationMode(new OnlySignedDevicesIsolationMode());
    else if (mode === "all") crypto.setDeviceIsolationMode(new AllDevicesIsolationMode(false));
    else throw new Error(`unknown isolation mode ${JSON.stringify(mode)} (only_signed or all)`);
    isolation = mode;
    return { isolation };
}

async function crossSigningStatus() {
    const crypto = requireClient().getCrypto();
    const status = await crypto.getCrossSigningStatus();
    const own = await crypto.getDeviceVerificationStatus(client.getUserId(), client.getDeviceId());
    return {
        ready: await crypto.isCrossSigningReady(),
        public_keys_on_device: status.publicKeysOnDevice,
        private_keys_cached: status.privateKeysCachedLocally,
        own_device_signed_by_owner: own ? own.signedByOwner : false,
        isolation,
    };
}

/** Make the OlmMachine track ``userId``'s devices and run the key query now.
 *
 * The CryptoApi has no call for it: getUserDeviceInfo(..., true) downloads the
 * keys of an untracked user without giving them to the OlmMachine, so
 * getDeviceVerificationStatus would not know the device. (Users sharing an
 * encrypted room with us are tracked anyway.) Uses the RustCrypto's private
 * olmMachine and outgoingRequestsManager. */
async function trackAndQuery(userId) {
    const crypto = requireClient().getCrypto();
    const tracked = [...(await crypto.olmMachine.trackedUsers())].map((id) => id.toString());
    if (!tracked.includes(userId)) await crypto.olmMachine.updateTrackedUsers([new UserId(userId)]);
    await crypto.outgoingRequestsManager.doProcessOutgoingRequests();
}

const ops = {
    async login({ homeserver_url, user_id, password, device_id, device_name, timeout_ms = 60000 }) {
        need({ homeserver_url, user_id, password, device_id }, "homeserver_url", "user_id", "password", "device_id");
        if (client) throw new Error("already logged in");
        const anonymous = sdk.createClient({ baseUrl: homeserver_url });
        const answer = await anonymous.loginRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: user_id },
            password,
            device_id,
            initial_device_display_name: device_name || `strict test client (${device_id})`,
        });
        client = sdk.createClient({
            baseUrl: homeserver_url,
            userId: answer.user_id,
            deviceId: answer.device_id,
            accessToken: answer.access_token,
        });
        client.on(RoomEvent.Timeline, (event, room) => {
            if (room) record(room.roomId, event);
        });
        await client.initRustCrypto({ useIndexedDB: false });
        let syncState = null;
        let syncError = null;
        client.on(ClientEvent.Sync, (state, _previous, data) => {
            syncState = state;
            if (state === SyncState.Error) syncError = data?.error;
        });
        await client.startClient({ initialSyncLimit: 50 });
        await waitUntil(
            () => {
                if (syncState === SyncState.Error && !client.isInitialSyncComplete()) {
                    throw new Error(`first sync failed: ${describeError(syncError)}`);
                }
                return client.isInitialSyncComplete();
            },
            timeout_ms,
            "the first sync",
            () => `sync state ${syncState}`,
        );
        return { user_id: answer.user_id, device_id: answer.device_id, crypto: client.getCrypto().getVersion() };
    },

    async bootstrap_cross_signing({ password, strict = true }) {
        need({ password }, "password");
        const crypto = requireClient().getCrypto();
        const userId = client.getUserId();
        // As Element's InteractiveAuth does: try without auth first (Synapse
        // lets a first upload through, MSC3967); on 401 answer the session's
        // password stage.
        await crypto.bootstrapCrossSigning({
            authUploadDeviceSigningKeys: async (makeRequest) => {
                try {
                    return await makeRequest(null);
                } catch (error) {
                    if (error?.httpStatus !== 401 || !error.data?.flows) throw error;
                    return await makeRequest({
                        type: "m.login.password",
                        identifier: { type: "m.id.user", user: userId },
                        password,
                        session: error.data.session,
                    });
                }
            },
        });
        setIsolation(strict ? "only_signed" : "all");
        return await crossSigningStatus();
    },

    async set_isolation({ mode }) {
        return setIsolation(mode);
    },

    async cross_signing_status() {
        return await crossSigningStatus();
    },

    async create_room({ name, invite = [], encrypted = true, timeout_ms = 30000 }) {
        requireClient();
        const options = { preset: "private_chat", invite, initial_state: [] };
        if (name) options.name = name;
        if (encrypted) {
            options.initial_state.push({
                type: "m.room.encryption",
                state_key: "",
                content: { algorithm: "m.megolm.v1.aes-sha2" },
            });
        }
        const { room_id } = await client.createRoom(options);
        await waitUntil(
            async () =>
                membershipOf(room_id, client.getUserId()) === "join" &&
                (!encrypted || (await client.getCrypto().isEncryptionEnabledInRoom(room_id))),
            timeout_ms,
            `room ${room_id} to come down the sync`,
        );
        return { room_id };
    },

    async join({ room_id, timeout_ms = 30000 }) {
        need({ room_id }, "room_id");
        await requireClient().joinRoom(room_id);
        await waitUntil(
            () => membershipOf(room_id, client.getUserId()) === "join",
            timeout_ms,
            `our join of ${room_id} to come down the sync`,
        );
        return { room_id };
    },

    async wait_invited({ inviter, count = 1, timeout_ms = 30000 }) {
        requireClient();
        const invited = () =>
            client
                .getRooms()
                .filter((room) => room.getMyMembership() === "invite")
                .filter((room) => !inviter || room.getMember(client.getUserId())?.events.member?.getSender() === inviter)
                .map((room) => room.roomId);
        const room_ids = await waitUntil(
            () => (invited().length >= count ? invited() : null),
            timeout_ms,
            `${count} invite(s)${inviter ? ` from ${inviter}` : ""}`,
        );
        return { room_ids };
    },

    async wait_joined({ room_id, user_ids = [], timeout_ms = 30000 }) {
        need({ room_id }, "room_id");
        requireClient();
        const everyone = [client.getUserId(), ...user_ids];
        await waitUntil(
            () => everyone.every((userId) => membershipOf(room_id, userId) === "join"),
            timeout_ms,
            `${everyone.join(", ")} joined in ${room_id}`,
            () => everyone.map((userId) => `${userId}: ${membershipOf(room_id, userId)}`).join(", "),
        );
        return { room_id, members: everyone };
    },

    async send_text({ room_id, body }) {
        need({ room_id, body }, "room_id", "body");
        const { event_id } = await requireClient().sendTextMessage(room_id, body);
        return { event_id };
    },

    async react({ room_id, event_id, key }) {
        need({ room_id, event_id, key }, "room_id", "event_id", "key");
        const answer = await requireClient().sendEvent(room_id, "m.reaction", {
            "m.relates_to": { rel_type: "m.annotation", event_id, key },
        });
        return { event_id: answer.event_id };
    },

    async wait_for_message({
        room_id,
        sender,
        body_contains,
        decrypted,
        decryption_error,
        type = "m.room.message",
        timeout_ms = 30000,
    }) {
        need({ room_id }, "room_id");
        requireClient();
        const matches = (event) => {
            if (!settled(event)) return false;
            if (sender && event.getSender() !== sender) return false;
            const failed = event.isDecryptionFailure();
            if (decrypted === true && failed) return false;
            if (decrypted === false && !failed) return false;
            // a failure can change its reason (a key arriving late, the sender's device signed later)
            if (decryption_error && (!failed || event.decryptionFailureReason !== decryption_error)) return false;
            if (!failed && event.getType() !== type) return false;
            if (body_contains !== undefined && body_contains !== null) {
                if (failed) return false;
                const body = event.getContent().body;
                if (typeof body !== "string" || !body.includes(body_contains)) return false;
            }
            return true;
        };
        const event = await waitUntil(
            () => roomMessages(room_id, type).find(matches),
            timeout_ms,
            `a message in ${room_id} (${JSON.stringify({ sender, body_contains, decrypted, decryption_error, type })})`,
            async () => `seen so far: ${JSON.stringify(await Promise.all(roomMessages(room_id, type).map(describe)))}`,
        );
        return await describe(event);
    },

    async messages({ room_id, type = "m.room.message" }) {
        need({ room_id }, "room_id");
        requireClient();
        return await Promise.all(roomMessages(room_id, type).map(describe));
    },

    async user_verification({ user_id }) {
        need({ user_id }, "user_id");
        const crypto = requireClient().getCrypto();
        await trackAndQuery(user_id);
        const devices = await crypto.getUserDeviceInfo([user_id]);
        const status = await crypto.getUserVerificationStatus(user_id);
        return {
            user_id,
            has_cross_signing_keys: await crypto.userHasCrossSigningKeys(user_id, true),
            verified: status.isVerified(),
            cross_signing_verified: status.isCrossSigningVerified(),
            was_cross_signing_verified: status.wasCrossSigningVerified(),
            needs_user_approval: status.needsUserApproval,
            devices: [...(devices.get(user_id)?.keys() ?? [])].sort(),
        };
    },

    async device_info({ user_id, device_id, timeout_ms = 0 }) {
        need({ user_id, device_id }, "user_id", "device_id");
        const crypto = requireClient().getCrypto();
        await trackAndQuery(user_id);
        let status = await crypto.getDeviceVerificationStatus(user_id, device_id);
        if (!status && timeout_ms > 0) {
            // a device the server has not told us about yet: its owner's device list changes come with a sync
            status = await waitUntil(
                () => crypto.getDeviceVerificationStatus(user_id, device_id),
                timeout_ms,
                `device ${device_id} of ${user_id} to be known`,
            ).catch(() => null);
        }
        if (!status) return { user_id, device_id, known: false };
        return {
            user_id,
            device_id,
            known: true,
            signed_by_owner: status.signedByOwner,
            cross_signing_verified: status.crossSigningVerified,
            locally_verified: status.localVerified,
            verified: status.isVerified(),
        };
    },

    async stop() {
        stop();
        return {};
    },
};

let stopped = false;
function stop() {
    if (stopped) return;
    stopped = true;
    if (client) client.stopClient();
    // let the answer reach stdout, then leave (timers of the SDK would keep Node alive)
    setImmediate(() => process.stdout.write("", () => process.exit(0)));
}

async function handle(line) {
    let request;
    try {
        request = JSON.parse(line);
    } catch (error) {
        send({ id: null, ok: false, error: `not JSON: ${line.slice(0, 200)}` });
        return;
    }
    const { id, op, ...args } = request;
    const operation = Object.hasOwn(ops, op) ? ops[op] : null;
    if (!operation) {
        send({ id, ok: false, error: `unknown op ${JSON.stringify(op)}` });
        return;
    }
    const started = Date.now();
    console.info(`[strict-client] op ${id} ${op} started`);
    try {
        const result = await operation(args);
        console.info(`[strict-client] op ${id} ${op} done in ${Date.now() - started} ms`);
        send({ id, ok: true, result: result ?? null });
    } catch (error) {
        console.error(`[strict-client] op ${id} ${op} failed: ${describeError(error, true)}`);
        send({ id, ok: false, error: describeError(error) });
    }
}

process.on("unhandledRejection", (reason) => {
    console.error(`[strict-client] unhandled rejection: ${describeError(reason, true)}`);
});

const input = createInterface({ input: process.stdin, crlfDelay: Infinity });
input.on("line", (line) => {
    if (line.trim()) handle(line);
});
input.on("close", stop);
console.info(`[strict-client] ready (node ${process.version})`);
send({ id: null, ok: true, result: { ready: true } });
