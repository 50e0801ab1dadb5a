//! What the integration tests share, as `mod support;` in each test file: the store and CLI
//! harness ([`store`]), real SSH hosts ([`testbed`]) and Clusterfile documents for them
//! ([`clusterfile`]), registry servers ([`registry`]), test data ([`noise`]) and tar archives
//! ([`tar`]). Each test binary compiles all of it and uses a part.
#![allow(dead_code)]

pub mod clusterfile;
pub mod containerd;
pub mod noise;
pub mod oci;
pub mod registry;
pub mod store;
pub mod tar;
pub mod testbed;
