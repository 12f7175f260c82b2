//! The forwarding pipeline: SRTP unprotect → route lookup → per-subscriber rewrite → protect.

pub mod rewrite;
pub mod rtx_cache;
