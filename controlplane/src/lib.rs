//! Sluice's control plane library. The gRPC API, state, compiler and journal arrive with the
//! control-plane issue.
#![deny(missing_docs)]
