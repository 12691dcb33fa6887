// Redaction runs on whatever leaves the API, tool output an attacker may have written included:
// every secret pattern (and the percent-decoding pass) must stay linear on 1 MB of text.
import { describe, expect, it } from "vitest";
import { defaultSecretPatterns, redactSecrets } from "./redact.js";

const MB = 1024 * 1024;
const fill = (unit: string) => unit.repeat(Math.ceil(MB / unit.length)).slice(0, MB);

// Prefixes that almost complete a secret, runs of one class, and markers without their ends.
const triggers = [
  "a",
  "A",
  "%41",
  "%4",
  "a%",
  "sk-ant-a-",
  "sk-",
  "key_sk-ant-api03-",
  "eyJ",
  "eyJaaaaaaaa.",
  "eyJaaaaaaaa.eyJaaaaaaaa.",
  "Bearer ",
  "bearer a",
  "-----BEGIN PRIVATE KEY-----",
  "-----BEGIN A A A ",
  "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n",
  "https://a:",
  "a://b:c",
  "https://u:p",
  "?token=",
  "&api_key",
  "?aaaaaaaaaaaaaaaaaaaaaaaaaaaa",
  "aws_secret_access_key= ",
  "keen_aaaaaaaaaaaa_",
  "ghp_",
  "github_pat_",
  "sk_live_",
  "whsec_",
  "AKIA",
  "xoxb-",
  "AIza",
  "a_",
  "a-",
  "a.",
];

function cpuMs(run: () => void): number {
  let best = Infinity;
  for (let i = 0; i < 3 && best >= 50; i++) {
    const started = process.cpuUsage();
    run();
    const used = process.cpuUsage(started);
    best = Math.min(best, (used.user + used.system) / 1000);
  }
  return best;
}

describe("secret patterns are linear on 1 MB of attacker text", () => {
  const inputs = triggers.map(fill);

  it.each(defaultSecretPatterns.map((p) => [p.kind, p] as const))("%s", (_, pattern) => {
    const slow = inputs
      .map((text, i) => [triggers[i]!, Math.round(cpuMs(() => redactSecrets(text, { patterns: [pattern] })))] as const)
      .filter(([, ms]) => ms >= 50);
    expect(slow).toEqual([]);
  }, 120_000);

  it("the whole default set, percent-decoding included, stays within a few hundred ms per MB", () => {
    const slow = inputs.map((text, i) => [triggers[i]!, Math.round(cpuMs(() => redactSecrets(text)))] as const).filter(([, ms]) => ms >= 500);
    expect(slow).toEqual([]);
  }, 120_000);
});
