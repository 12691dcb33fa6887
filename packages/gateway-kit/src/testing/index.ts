export { describeEachDatabase, separatePools, TEST_DATABASE_URL, type DatabaseFixture } from "./each-database.js";
export { decodeStripeForm, startFakeStripe, type FakeStripe } from "../billing/fake-stripe.js";
