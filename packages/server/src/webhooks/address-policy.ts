import { lookup as dnsLookup } from "node:dns/promises";
import { BlockList, isIP } from "node:net";
import { ServerError } from "../errors.js";

/**
 * Address ranges a webhook may not reach unless the server allows private targets: this host,
 * private networks, link-local (cloud metadata lives at 169.254.169.254 and fd00:ec2::254),
 * carrier-grade NAT, and ranges that are not unicast on the internet at all.
 */
const NON_PUBLIC = new BlockList();
for (const [network, prefix] of [
  ["0.0.0.0", 8], // "this network"; 0.0.0.0 reaches the local host on Linux
  ["10.0.0.0", 8],
  ["100.64.0.0", 10], // carrier-grade NAT; also Alibaba's metadata address
  ["127.0.0.0", 8],
  ["169.254.0.0", 16],
  ["172.16.0.0", 12],
  ["192.0.0.0", 24],
  ["192.0.2.0", 24],
  ["192.88.99.0", 24],
  ["192.168.0.0", 16],
  ["198.18.0.0", 15],
  ["198.51.100.0", 24],
  ["203.0.113.0", 24],
  ["224.0.0.0", 4],
  ["240.0.0.0", 4],
] as const) {
  NON_PUBLIC.addSubnet(network, prefix, "ipv4");
}
for (const [network, prefix] of [
  ["::", 128],
  ["::1", 128],
  ["100::", 64],
  ["2001:db8::", 32],
  ["fc00::", 7],
  ["fe80::", 10],
  ["fec0::", 10],
  ["ff00::", 8],
] as const) {
  NON_PUBLIC.addSubnet(network, prefix, "ipv6");
}

/** The IPv4 address an IPv6 one carries (mapped, compatible, NAT64, 6to4), if any. */
function embeddedIpv4(address: string): string | undefined {
  const lower = address.toLowerCase();
  const dotted = /^(?:::ffff:|::|64:ff9b::)(\d+\.\d+\.\d+\.\d+)$/.exec(lower);
  if (dotted) return dotted[1];
  const groups = expandIpv6(lower);
  if (!groups) return undefined;
  const toV4 = (hi: number, lo: number) => `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  const zeros = (from: number, to: number) => groups.slice(from, to).every((g) => g === 0);
  if (zeros(0, 5) && groups[5] === 0xffff) return toV4(groups[6]!, groups[7]!); // ::ffff:a.b.c.d
  if (zeros(0, 6)) return toV4(groups[6]!, groups[7]!); // ::a.b.c.d (deprecated "compatible")
  if (groups[0] === 0x64 && groups[1] === 0xff9b && zeros(2, 6)) return toV4(groups[6]!, groups[7]!); // NAT64
  if (groups[0] === 0x2002) return toV4(groups[1]!, groups[2]!); // 6to4
  return undefined;
}

function expandIpv6(address: string): number[] | undefined {
  const [head, tail, extra] = address.split("::");
  if (extra !== undefined) return undefined;
  const parse = (part: string | undefined) => (part ? part.split(":").map((g) => Number.parseInt(g, 16)) : []);
  const left = parse(head);
  const right = tail === undefined ? [] : parse(tail);
  if ([...left, ...right].some((g) => Number.isNaN(g) || g < 0 || g > 0xffff)) return undefined;
  const fill = 8 - left.length - right.length;
  if (tail === undefined ? fill !== 0 : fill < 0) return undefined;
  return [...left, ...Array<number>(Math.max(fill, 0)).fill(0), ...right];
}

/**
 * Whether an IP address is a public unicast one a webhook may be sent to.
 *
 * @example
 * isPublicAddress("169.254.169.254"); // false
 * isPublicAddress("::ffff:10.0.0.1"); // false
 * isPublicAddress("93.184.216.34"); // true
 */
export function isPublicAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 4) return !NON_PUBLIC.check(address, "ipv4");
  if (family === 6) {
    const v4 = embeddedIpv4(address);
    if (v4 !== undefined) return isIP(v4) === 4 && !NON_PUBLIC.check(v4, "ipv4");
    return !NON_PUBLIC.check(address, "ipv6");
  }
  return false;
}

export interface AddressPolicy {
  /** Allow loopback and private targets (self-hosted setups, tests). */
  allowPrivate: boolean;
}

/**
 * Checks a webhook URL's shape: http(s) only, no credentials in it, a host. Returns the parsed URL.
 * Throws `webhook_url_refused`.
 */
export function parseWebhookUrl(raw: string): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ServerError("webhook_url_refused", "url is not a valid URL");
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") throw new ServerError("webhook_url_refused", "url must be http or https");
  if (url.username || url.password) throw new ServerError("webhook_url_refused", "url must not carry credentials");
  if (!url.hostname) throw new ServerError("webhook_url_refused", "url has no host");
  return url;
}

/** The host as `lookup`/`isIP` take it (IPv6 literals lose their brackets). */
export function bareHost(url: URL): string {
  return url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname;
}

/**
 * Resolves the URL's host and checks every address it resolves to; refuses the URL when one of
 * them is not public (unless the policy allows private targets). Returns the addresses.
 * The same check runs at registration and before every delivery (a name can be re-pointed).
 *
 * @example
 * await resolveWebhookTarget(new URL("https://hooks.example.com/keen"), { allowPrivate: false });
 */
export async function resolveWebhookTarget(url: URL, policy: AddressPolicy): Promise<Array<{ address: string; family: number }>> {
  const host = bareHost(url);
  let addresses: Array<{ address: string; family: number }>;
  if (isIP(host)) addresses = [{ address: host, family: isIP(host) }];
  else {
    try {
      addresses = await dnsLookup(host, { all: true, verbatim: true });
    } catch {
      throw new ServerError("webhook_url_refused", `url host ${host} does not resolve`);
    }
  }
  if (addresses.length === 0) throw new ServerError("webhook_url_refused", `url host ${host} does not resolve`);
  if (!policy.allowPrivate) {
    const blocked = addresses.find((a) => !isPublicAddress(a.address));
    if (blocked) throw new ServerError("webhook_url_refused", `url host ${host} resolves to a non-public address (${blocked.address})`);
  }
  return addresses;
}
