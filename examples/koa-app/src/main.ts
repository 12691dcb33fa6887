import { openDatabase } from "@keen/gateway-kit";
import { createApp } from "./app.js";

// DATABASE_URL for PostgreSQL; without it, an embedded PGlite database in ./data.
const database = await openDatabase(process.env.DATABASE_URL ? { url: process.env.DATABASE_URL } : { dataDir: "./data" });
const app = await createApp({ database });
const port = Number(process.env.PORT ?? 3000);
app.listen(port, () => console.log(`listening on http://localhost:${port}`));
