//! The forwarding pipeline: SRTP unprotect → route lookup → per-subscriber rewrite → protect.

pub mod rewrite;
