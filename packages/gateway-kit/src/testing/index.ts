export { describeEachDatabase, separatePools, TEST_DATABASE_URL, type DatabaseFixture } from "./each-database.js";
