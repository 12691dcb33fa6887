// Test preload for `keen`: on SIGUSR2, every libuv threadpool thread starts a read of the FIFO
// named by KEEN_TEST_FIFO that never returns, as a read of a FIFO or of a hung network file
// system would. From then on no fs call completes, and the process cannot exit by itself.
import { readFile } from "node:fs";

process.once("SIGUSR2", () => {
  const threads = Number(process.env.UV_THREADPOOL_SIZE) || 4;
  for (let i = 0; i < threads; i++) readFile(process.env.KEEN_TEST_FIFO, () => {});
});
