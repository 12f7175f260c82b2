//! Test-only bindings to the system libsrtp2.
