import { randomUUID } from "node:crypto";
import { mkdir, readdir, readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { parseMailMessage, type MailMessage, type Mailer } from "@keen/gateway-kit";

/** A message as the outbox holds it: the file it is in, and when it was written. */
export interface OutboxMessage extends MailMessage {
  file: string;
  date: string;
}

// Orders the files one process writes within the same millisecond.
let sequence = 0;

const encodeSubject = (subject: string) => (/^[\x20-\x7e]*$/.test(subject) ? subject : `=?UTF-8?B?${Buffer.from(subject, "utf8").toString("base64")}?=`);
const decodeSubject = (subject: string) => /^=\?UTF-8\?B\?([A-Za-z0-9+/=]*)\?=$/.exec(subject)?.[1] ?? undefined;

/**
 * A `Mailer` that delivers nowhere: each message becomes one file, `<dir>/<time>-<n>-<id>.eml`,
 * readable by a person, a mail client or `readOutbox`. For development and for self-hosting
 * without an SMTP relay: whoever runs the server reads the verification link there, or hands
 * the folder to something that sends it on. Files are written whole (a temporary name, then a
 * rename) and only their owner may read them (mode 600, folder 700): they hold tokens.
 *
 * @example
 * const mailer = outboxMailer({ dir: join(config.dataDir, "outbox") });
 * await mailer.send({ to: "ada@example.com", subject: "Hello", text: "…" });
 * (await readOutbox(join(config.dataDir, "outbox"))).at(-1)?.subject; // "Hello"
 */
export function outboxMailer(options: { dir: string; now?: () => Date }): Mailer {
  const now = options.now ?? (() => new Date());
  let ready: Promise<unknown> | undefined;
  return {
    async send(input) {
      const message = parseMailMessage(input);
      await (ready ??= mkdir(options.dir, { recursive: true, mode: 0o700 }).catch((error: unknown) => {
        ready = undefined;
        throw error;
      }));
      const at = now();
      const name = `${at.getTime()}-${String(sequence++ % 1e9).padStart(9, "0")}-${randomUUID().slice(0, 8)}.eml`;
      const content = [
        `To: ${message.to}`,
        `Subject: ${encodeSubject(message.subject)}`,
        `Date: ${at.toUTCString()}`,
        `Message-ID: <${randomUUID()}@keen.outbox>`,
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        message.text,
      ].join("\n");
      const temporary = join(options.dir, `.${name}.tmp`);
      await writeFile(temporary, content, { mode: 0o600, flag: "wx" });
      await rename(temporary, join(options.dir, name));
    },
  };
}

/**
 * The messages in an outbox folder, oldest first (an absent folder is an empty outbox).
 *
 * @example
 * const last = (await readOutbox(dir)).filter((m) => m.to === "ada@example.com").at(-1);
 */
export async function readOutbox(dir: string): Promise<OutboxMessage[]> {
  const names = await readdir(dir).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return [] as string[];
    throw error;
  });
  const files = names.filter((name) => /^\d+-\d+-[0-9a-f]{8}\.eml$/.test(name)).sort();
  const messages: OutboxMessage[] = [];
  for (const file of files) {
    const content = await readFile(join(dir, file), "utf8");
    const end = content.indexOf("\n\n");
    const headers = new Map<string, string>();
    for (const line of content.slice(0, end).split("\n")) {
      const colon = line.indexOf(": ");
      headers.set(line.slice(0, colon).toLowerCase(), line.slice(colon + 2));
    }
    const subject = headers.get("subject") ?? "";
    const encoded = decodeSubject(subject);
    messages.push({
      file,
      to: headers.get("to") ?? "",
      subject: encoded === undefined ? subject : Buffer.from(encoded, "base64").toString("utf8"),
      text: content.slice(end + 2),
      date: headers.get("date") ?? "",
    });
  }
  return messages;
}
