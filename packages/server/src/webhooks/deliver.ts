import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import type { LookupFunction } from "node:net";
import { ServerError } from "../errors.js";
import { bareHost, parseWebhookUrl, resolveWebhookTarget, type AddressPolicy } from "./address-policy.js";

export interface DeliveryAttempt {
  /** The receiver's status code; null when no response came (refused, timed out, unreachable). */
  statusCode: number | null;
  durationMs: number;
  /** Why the attempt failed; null on a 2xx. */
  error: string | null;
  /** The start of the response body, at most `maxResponseBytes`. */
  responseBody: string | null;
}

export interface DeliverOptions extends AddressPolicy {
  timeoutMs: number;
  /** Bytes of the response body kept (the rest is not read). */
  maxResponseBytes: number;
}

/**
 * POSTs one signed webhook. The host is resolved and every address checked first; the socket
 * then connects to one of exactly those addresses (a lookup that answers only with them), so a
 * name re-pointed between the check and the connect cannot reach an internal address.
 * Redirects are not followed (a 3xx is a failed attempt), the whole attempt has a deadline,
 * and at most `maxResponseBytes` of the answer are read.
 */
export async function deliverWebhook(rawUrl: string, headers: Record<string, string>, body: string, options: DeliverOptions): Promise<DeliveryAttempt> {
  const started = performance.now();
  const elapsed = () => Math.round(performance.now() - started);
  let addresses: Array<{ address: string; family: number }>;
  let url: URL;
  try {
    url = parseWebhookUrl(rawUrl);
    addresses = await resolveWebhookTarget(url, options);
  } catch (error) {
    const reason = error instanceof ServerError ? error.message : "url could not be checked";
    return { statusCode: null, durationMs: elapsed(), error: `refused: ${reason}`, responseBody: null };
  }
  const pinned: LookupFunction = (_hostname, lookupOptions, callback) => {
    const pick = addresses.find((a) => !lookupOptions.family || a.family === lookupOptions.family) ?? addresses[0]!;
    if (lookupOptions.all) (callback as unknown as (e: null, list: typeof addresses) => void)(null, [pick]);
    else callback(null, pick.address, pick.family);
  };
  const send = url.protocol === "https:" ? httpsRequest : httpRequest;
  return new Promise<DeliveryAttempt>((resolve) => {
    let settled = false;
    const finish = (attempt: Omit<DeliveryAttempt, "durationMs">) => {
      if (settled) return;
      settled = true;
      clearTimeout(deadline);
      resolve({ ...attempt, durationMs: elapsed() });
    };
    const req = send(
      url,
      {
        method: "POST",
        headers: { ...headers, "content-type": "application/json", "content-length": String(Buffer.byteLength(body)), "user-agent": "keen-webhooks/1" },
        lookup: pinned,
        // TLS still checks the certificate against the name in the URL.
        ...(url.protocol === "https:" ? { servername: bareHost(url) } : {}),
        agent: false,
      },
      (res: IncomingMessage) => {
        const chunks: Buffer[] = [];
        let kept = 0;
        const done = () => {
          const text = Buffer.concat(chunks).toString("utf8");
          const status = res.statusCode ?? 0;
          const ok = status >= 200 && status < 300;
          finish({
            statusCode: status,
            error: ok ? null : status >= 300 && status < 400 ? `redirect (${status}) not followed` : `receiver answered ${status}`,
            responseBody: text,
          });
          res.destroy();
        };
        res.on("data", (chunk: Buffer) => {
          const room = options.maxResponseBytes - kept;
          if (room > 0) {
            chunks.push(chunk.subarray(0, room));
            kept += Math.min(room, chunk.length);
          }
          if (kept >= options.maxResponseBytes) done();
        });
        res.on("end", done);
        res.on("error", done);
      },
    );
    const deadline = setTimeout(() => {
      finish({ statusCode: null, error: `timed out after ${options.timeoutMs} ms`, responseBody: null });
      req.destroy();
    }, options.timeoutMs);
    req.on("error", (error) => finish({ statusCode: null, error: `request failed: ${(error as NodeJS.ErrnoException).code ?? error.message}`, responseBody: null }));
    req.end(body);
  });
}
