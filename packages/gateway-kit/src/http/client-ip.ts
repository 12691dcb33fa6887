import { ConfigError } from "../errors.js";
import { BlockList, isIP } from "node:net";
import type { Middleware, ParameterizedContext } from "koa";
import * as z from "zod";

declare module "koa" {
  interface DefaultState {
    /** The client's address as `clientIp()` resolved it: always a valid, normalised IP. */
    clientIp?: string;
  }
}

/** The eight 16-bit groups of a valid IPv6 address (zone stripped, embedded IPv4 tail expanded). */
function ipv6Groups(address: string): number[] {
  let text = address.toLowerCase();
  const zone = text.indexOf("%");
  if (zone >= 0) text = text.slice(0, zone);
  const lastColon = text.lastIndexOf(":");
  const tail = text.slice(lastColon + 1);
  if (tail.includes(".")) {
    const [a, b, c, d] = tail.split(".").map(Number) as [number, number, number, number];
    text = `${text.slice(0, lastColon + 1)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, rest] = text.split("::") as [string, string | undefined];
  const parse = (part: string | undefined) => (part ? part.split(":").map((g) => Number.parseInt(g, 16)) : []);
  const left = parse(head);
  const right = parse(rest);
  return rest === undefined ? left : [...left, ...new Array<number>(8 - left.length - right.length).fill(0), ...right];
}

/**
 * The canonical form of an IP address, or undefined when `value` is not one: IPv4-mapped IPv6
 * (`::ffff:203.0.113.9`, `::ffff:cb00:7109`) becomes the IPv4 address, IPv6 is lower-cased
 * without a zone, brackets and a port are dropped. Anything longer than an address is refused.
 *
 * @example
 * normaliseIp("::FFFF:203.0.113.9"); // "203.0.113.9"
 * normaliseIp("x".repeat(8000));     // undefined
 */
export function normaliseIp(value: string | undefined | null): string | undefined {
  if (typeof value !== "string" || value.length === 0 || value.length > 64) return undefined;
  let text = value.trim();
  const bracketed = /^\[([^\]]+)\](?::\d{1,5})?$/.exec(text);
  if (bracketed) text = bracketed[1]!;
  const v4WithPort = /^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$/.exec(text);
  if (v4WithPort) text = v4WithPort[1]!;
  const kind = isIP(text);
  if (kind === 4) return text;
  if (kind !== 6) return undefined;
  const groups = ipv6Groups(text);
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    const [hi, lo] = [groups[6]!, groups[7]!];
    return `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
  }
  return groups.map((g) => g.toString(16)).join(":");
}

/** The shortest and longest IPv6 prefix limits may count a client by (a /32 is a whole provider). */
export const IPV6_PREFIX_LENGTHS = { min: 32, max: 128, default: 64 } as const;

/** The option every limiter takes for how it counts IPv6 clients: a prefix length, default 64. */
export const Ipv6PrefixLength = z.number().int().min(IPV6_PREFIX_LENGTHS.min).max(IPV6_PREFIX_LENGTHS.max).default(IPV6_PREFIX_LENGTHS.default);

/**
 * The key that limits and lockouts count an address under: an IPv4 address (IPv4-mapped IPv6
 * included) as itself, an IPv6 address by its first `ipv6PrefixLength` bits (default 64), since
 * one subscriber routinely holds a whole /64, often a /56 or /48, and can rotate through it;
 * `unknown` when there is no valid address. Throws `ConfigError` for a length outside 32–128.
 *
 * @example
 * ipLimitKey("2001:db8:1:2:aaaa::1");     // "2001:db8:1:2::/64"
 * ipLimitKey("2001:db8:1:2:aaaa::1", 48); // "2001:db8:1::/48"
 * ipLimitKey("::ffff:198.51.100.7");      // "198.51.100.7"
 */
export function ipLimitKey(ip: string | undefined, ipv6PrefixLength: number = IPV6_PREFIX_LENGTHS.default): string {
  const length = Ipv6PrefixLength.safeParse(ipv6PrefixLength);
  if (!length.success) throw new ConfigError(`ipv6PrefixLength must be a whole number from ${IPV6_PREFIX_LENGTHS.min} to ${IPV6_PREFIX_LENGTHS.max}, not ${ipv6PrefixLength}`);
  const bits = length.data;
  const normal = normaliseIp(ip);
  if (!normal) return "unknown";
  if (isIP(normal) === 4 || bits === 128) return normal;
  const groups = ipv6Groups(normal).slice(0, Math.ceil(bits / 16));
  const spare = groups.length * 16 - bits;
  groups[groups.length - 1] = (groups[groups.length - 1]! >> spare) << spare;
  return `${groups.map((g) => g.toString(16)).join(":")}::/${bits}`;
}

/** Options of `clientIp()`. */
export const ClientIpOptions = z
  .object({
    /**
     * How many proxies of yours sit in front of the app, each appending the address it saw to
     * `X-Forwarded-For`. The client is the entry that many places from the right (counting the
     * socket as the first). 0 (the default): the socket's address; headers are ignored.
     */
    trustedHops: z.number().int().min(0).max(20).default(0),
    /**
     * Addresses or CIDR ranges of your proxies (e.g. `10.0.0.0/8`). When set, the header is
     * walked from the right while the hop is one of them, and the first other address is the
     * client. Takes precedence over `trustedHops`.
     */
    trustedProxies: z.array(z.string().min(1).max(64)).max(1000).optional(),
    /** The header your proxies append to. Default `x-forwarded-for`. */
    header: z.string().regex(/^[a-z0-9-]+$/).default("x-forwarded-for"),
  })
  .strict();
export type ClientIpOptions = z.input<typeof ClientIpOptions>;

interface Resolver {
  (ctx: ParameterizedContext): string | undefined;
}

function buildResolver(options: z.output<typeof ClientIpOptions>): Resolver {
  let trusted: BlockList | undefined;
  if (options.trustedProxies) {
    trusted = new BlockList();
    for (const entry of options.trustedProxies) {
      const [address, bits] = entry.split("/") as [string, string | undefined];
      const normal = normaliseIp(address);
      const family = normal && isIP(normal) === 6 ? "ipv6" : "ipv4";
      const prefix = bits === undefined ? undefined : Number(bits);
      if (!normal || (prefix !== undefined && (!Number.isInteger(prefix) || prefix < 0 || prefix > (family === "ipv6" ? 128 : 32)))) {
        throw new ConfigError(`Invalid clientIp options: trustedProxies entry ${JSON.stringify(entry)} is not an address or CIDR range`);
      }
      if (prefix === undefined) trusted.addAddress(normal, family);
      else trusted.addSubnet(normal, prefix, family);
    }
  }
  const isTrusted = (ip: string) => trusted!.check(ip, isIP(ip) === 6 ? "ipv6" : "ipv4");
  return (ctx) => {
    const socket = normaliseIp(ctx.req.socket?.remoteAddress);
    const header = ctx.get(options.header);
    const chain = header ? header.split(",").map((entry) => entry.trim()) : [];
    if (trusted) {
      let address = socket;
      let index = chain.length - 1;
      while (address && isTrusted(address) && index >= 0) {
        address = normaliseIp(chain[index]);
        index -= 1;
      }
      return address;
    }
    if (options.trustedHops === 0) return socket;
    // Fewer hops than configured means the request did not come through all the proxies: the
    // header is the sender's own words, so only the socket is known.
    if (chain.length < options.trustedHops) return socket;
    return normaliseIp(chain[chain.length - options.trustedHops]);
  };
}

/**
 * Resolves the client's address once per request and puts it on `ctx.state.clientIp`, for the
 * login limiter, rate limits and session records. Only hops you trust are believed: with the
 * defaults the socket's address is used and `X-Forwarded-For` is ignored. The result is always
 * a valid, normalised address, or absent.
 *
 * Without this middleware gateway-kit falls back to `requestIp()`'s default: behind
 * `app.proxy = true` it believes `app.maxIpsCount` hops (1 when unset), never the leftmost entry.
 *
 * @example
 * app.use(clientIp({ trustedHops: 1 }));                       // one load balancer in front
 * app.use(clientIp({ trustedProxies: ["10.0.0.0/8", "::1"] })); // or: your proxies by address
 */
export function clientIp(input: ClientIpOptions = {}): Middleware {
  const parsed = ClientIpOptions.safeParse(input);
  if (!parsed.success) throw new ConfigError(`Invalid clientIp options: ${z.prettifyError(parsed.error)}`);
  const resolve = buildResolver(parsed.data);
  return async (ctx, next) => {
    const ip = resolve(ctx);
    if (ip) ctx.state.clientIp = ip;
    else delete ctx.state.clientIp;
    await next();
  };
}

const fallbackResolvers = new Map<string, Resolver>();

/**
 * The client's address as gateway-kit uses it: `ctx.state.clientIp` when `clientIp()` ran,
 * otherwise the socket's address, or behind `app.proxy = true` the `X-Forwarded-For` entry
 * `app.maxIpsCount` hops from the right (1 when unset). Always a valid, normalised address or
 * undefined, never raw header text.
 *
 * @example
 * const ip = requestIp(ctx); // "203.0.113.9" | "2001:db8::1" | undefined
 */
export function requestIp(ctx: ParameterizedContext): string | undefined {
  if (ctx.state.clientIp) return normaliseIp(ctx.state.clientIp);
  const hops = Math.min(ctx.app?.proxy ? Math.max(1, ctx.app.maxIpsCount || 0) : 0, 20);
  const header = String(ctx.app?.proxyIpHeader || "x-forwarded-for").toLowerCase();
  const cacheKey = `${hops} ${header}`;
  let resolve = fallbackResolvers.get(cacheKey);
  if (!resolve) {
    resolve = buildResolver(ClientIpOptions.parse({ trustedHops: hops, header }));
    fallbackResolvers.set(cacheKey, resolve);
  }
  return resolve(ctx);
}
