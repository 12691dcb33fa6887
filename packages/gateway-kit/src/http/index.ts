export { clientIp, ClientIpOptions, ipLimitKey, normaliseIp, requestIp } from "./client-ip.js";
export { jsonNotFound, securityHeaders, SecurityHeadersOptions } from "./security-headers.js";
