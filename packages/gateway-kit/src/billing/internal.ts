/**
 * What sibling modules of gateway-kit may use of billing beyond its public index: the local
 * Stripe stand-in, published through `@keen/gateway-kit/testing` only.
 */
export { decodeStripeForm, startFakeStripe, type FakeStripe } from "./fake-stripe.js";
