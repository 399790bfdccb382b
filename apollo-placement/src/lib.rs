//! Placement core shared by APOLLO's engines and `apolloctl simulate`: what a
//! pod needs ([`demand`]), GPU fragmentation ([`fgd`]), the cluster as the
//! scorer sees it ([`snapshot`]), the node scorer ([`scorer`]) and the
//! published baseline policies ([`baselines`]).
//!
//! Pure computation: no runtime, no bus, no RPC. Modules depend in one
//! direction only: `demand` <- `fgd` <- `snapshot` <- `scorer`, `baselines`.

#![forbid(unsafe_code)]

pub mod baselines;
pub mod demand;
pub mod fgd;
pub mod scorer;
pub mod snapshot;
