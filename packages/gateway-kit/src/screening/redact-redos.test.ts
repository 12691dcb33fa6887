// Redaction runs on whatever leaves the API, tool output an attacker may have written included:
// every secret pattern (and the percent-decoding pass) must stay linear on 1 MB of text. Inputs
// over a small CPU budget must scale linearly (see linear-time.ts).
import { describe, expect, it } from "vitest";
import { superlinearGrowth } from "./linear-time.js";
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

describe("secret patterns are linear on 1 MB of attacker text", () => {
  const inputs = triggers.map(fill);

  it.each(defaultSecretPatterns.map((p) => [p.kind, p] as const))("%s", (_, pattern) => {
    const slow = inputs
      .map((text, i) => [triggers[i]!, superlinearGrowth(text, (t) => redactSecrets(t, { patterns: [pattern] }), 50)] as const)
      .filter(([, ratio]) => ratio !== undefined);
    expect(slow).toEqual([]);
  }, 120_000);

  it("the whole default set, percent-decoding included, is linear too", () => {
    const slow = inputs
      .map((text, i) => [triggers[i]!, superlinearGrowth(text, (t) => redactSecrets(t), 500)] as const)
      .filter(([, ratio]) => ratio !== undefined);
    expect(slow).toEqual([]);
  }, 120_000);

  it("the check itself tells a quadratic pattern from a linear one", () => {
    // /a+b/g on a run of a's without a b tries every start and scans to the end from each.
    const quadratic = { kind: "quadratic", pattern: /a+b/g };
    const linear = { kind: "linear", pattern: /ab/g };
    const text = "a".repeat(16 * 1024);
    expect(superlinearGrowth(text, (t) => redactSecrets(t, { patterns: [quadratic] }), 5)).toBeGreaterThanOrEqual(8);
    expect(superlinearGrowth(text.repeat(64), (t) => redactSecrets(t, { patterns: [linear] }), 0)).toBeUndefined();
  }, 120_000);
});
