// The reference server lands with its own issue; the package is private until then.
export {};
