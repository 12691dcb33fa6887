/**
 * The seccomp filter every sandboxed command runs under (bubblewrap's `--seccomp FD` takes a
 * compiled classic BPF program). It refuses, with EPERM, the system calls that reach kernel state
 * no namespace separates:
 *
 * - the key management calls (`add_key`, `request_key`, `keyctl`): keyrings belong to the user
 *   id, not to a namespace, so a sandbox could read the host user's keys and leave keys behind
 *   that later sandboxes (other agents) read.
 * - new user namespaces (`unshare` or `clone` with `CLONE_NEWUSER`): inside one a process holds
 *   every capability again and reaches mount, netfilter and other kernel code that most
 *   published sandbox escapes go through. `clone3` answers ENOSYS (its flags sit in memory a
 *   filter cannot read), and C libraries then fall back to `clone`, whose flags it can.
 * - io_uring (`io_uring_setup`, `io_uring_enter`, `io_uring_register`): a large kernel surface
 *   with a long record of privilege escalations, which container runtimes refuse too.
 *
 * Other architectures' numbers are used through a 32-bit entry point on x86-64, so those are
 * filtered too, and the x32 ABI is refused whole.
 */

interface Instruction {
  code: number;
  jt: number | string;
  jf: number | string;
  k: number;
  label?: string;
}

const LD_W_ABS = 0x20;
const JEQ_K = 0x15;
const JGE_K = 0x35;
const JSET_K = 0x45;
const RET_K = 0x06;
const SECCOMP_RET_ALLOW = 0x7fff0000;
const SECCOMP_RET_ERRNO = 0x00050000;
const EPERM = 1;
const ENOSYS = 38;
const CLONE_NEWUSER = 0x10000000;
/** io_uring_setup, io_uring_enter, io_uring_register: the same numbers on every entry point. */
const IO_URING = [425, 426, 427];
/** clone3: the same number on every entry point. */
const CLONE3 = 435;
/** Offsets in `struct seccomp_data`. */
const NR = 0;
const ARCH = 4;
/** The low 32 bits of the first argument (little-endian). */
const ARG0 = 16;

/** Audit architecture and the blocked calls' numbers per entry point. */
interface EntryPoint {
  arch: number;
  /** Refused outright: the keyring calls, then io_uring. */
  blocked: number[];
  /** clone and unshare: refused when their flags ask for a new user namespace. */
  namespaceFlags: number[];
  refuseAtOrAbove?: number;
}

const ARCHITECTURES: Record<string, EntryPoint[]> = {
  x64: [
    // add_key, request_key, keyctl; clone, unshare; every x32 call (numbers with bit 30 set).
    { arch: 0xc000003e, blocked: [248, 249, 250, ...IO_URING], namespaceFlags: [56, 272], refuseAtOrAbove: 0x40000000 },
    // The same calls through the i386 entry point (int 0x80).
    { arch: 0x40000003, blocked: [286, 287, 288, ...IO_URING], namespaceFlags: [120, 310] },
  ],
  arm64: [
    { arch: 0xc00000b7, blocked: [217, 218, 219, ...IO_URING], namespaceFlags: [220, 97] },
    // 32-bit ARM compat.
    { arch: 0x40000028, blocked: [309, 310, 311, ...IO_URING], namespaceFlags: [120, 337] },
  ],
};

/**
 * The compiled filter for this machine's architecture, or null where keen has no table for it
 * (the sandbox then runs without the filter).
 */
export function sandboxSeccompProgram(arch: string = process.arch): Buffer | null {
  const entries = ARCHITECTURES[arch];
  if (!entries) return null;
  const program: Instruction[] = [{ code: LD_W_ABS, jt: 0, jf: 0, k: ARCH }];
  for (const [index, entry] of entries.entries()) {
    const next = `arch${index + 1}`;
    program.push({ code: JEQ_K, jt: 0, jf: next, k: entry.arch, label: `arch${index}` });
    program.push({ code: LD_W_ABS, jt: 0, jf: 0, k: NR });
    if (entry.refuseAtOrAbove !== undefined) program.push({ code: JGE_K, jt: "deny", jf: 0, k: entry.refuseAtOrAbove });
    for (const nr of entry.blocked) program.push({ code: JEQ_K, jt: "deny", jf: 0, k: nr });
    program.push({ code: JEQ_K, jt: "nosys", jf: 0, k: CLONE3 });
    for (const nr of entry.namespaceFlags) program.push({ code: JEQ_K, jt: `flags${index}`, jf: 0, k: nr });
    program.push({ code: RET_K, jt: 0, jf: 0, k: SECCOMP_RET_ALLOW });
    program.push({ code: LD_W_ABS, jt: 0, jf: 0, k: ARG0, label: `flags${index}` });
    program.push({ code: JSET_K, jt: "deny", jf: 0, k: CLONE_NEWUSER });
    program.push({ code: RET_K, jt: 0, jf: 0, k: SECCOMP_RET_ALLOW });
  }
  // An architecture not listed: allowed (the filter only narrows calls it knows by number).
  program.push({ code: RET_K, jt: 0, jf: 0, k: SECCOMP_RET_ALLOW, label: `arch${entries.length}` });
  program.push({ code: RET_K, jt: 0, jf: 0, k: SECCOMP_RET_ERRNO | EPERM, label: "deny" });
  program.push({ code: RET_K, jt: 0, jf: 0, k: SECCOMP_RET_ERRNO | ENOSYS, label: "nosys" });

  const labels = new Map<string, number>();
  program.forEach((instruction, index) => instruction.label && labels.set(instruction.label, index));
  const offset = (target: number | string, index: number): number => {
    if (typeof target === "number") return target;
    const jump = labels.get(target)! - index - 1;
    if (jump < 0 || jump > 255) throw new Error(`seccomp jump to ${target} out of range`);
    return jump;
  };
  const bytes = Buffer.alloc(program.length * 8);
  program.forEach((instruction, index) => {
    bytes.writeUInt16LE(instruction.code, index * 8);
    bytes.writeUInt8(offset(instruction.jt, index), index * 8 + 2);
    bytes.writeUInt8(offset(instruction.jf, index), index * 8 + 3);
    bytes.writeUInt32LE(instruction.k >>> 0, index * 8 + 4);
  });
  return bytes;
}
