//! The data plane's proxy-wasm filter.
//!
//! For every invoke it authenticates the key and resolves the action (management API), claims a
//! free warm container in Envoy's shared data ([`pool`]) or asks the control plane for a cold start,
//! pins the request to that container and rewrites it into the runtime's `/run` envelope
//! ([`envelope`]); on the way back it turns the runtime's answer into an activation record
//! ([`activation`]), releases the container and hands the record to the store off the reply path.
//! A sequence runs no container itself: the filter invokes its components one after another through
//! its own ingress and builds the sequence's record from their answers ([`sequence`]). A web action
//! request becomes an internal invoke of the action with the request as its parameters, and its
//! record becomes the HTTP response ([`web`]).
//!
//! The modules below are pure and tested on the host; `shell` is the thin proxy-wasm adapter and
//! exists only in the wasm32 build.

pub mod activation;
pub mod cache;
pub mod envelope;
pub mod limits;
pub mod pool;
pub mod queue;
pub mod route;
pub mod sequence;
pub mod web;

#[cfg(target_arch = "wasm32")]
mod shell;
