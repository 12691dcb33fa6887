/**
 * What sibling modules of gateway-kit may use of http beyond its public index: the limiters'
 * IPv6 prefix option, shared so every limiter and the erasure agree on its range. Never
 * re-exported from the package's entries.
 */
export { IPV6_PREFIX_LENGTHS, Ipv6PrefixLength } from "./client-ip.js";
