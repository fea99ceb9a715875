//! keyroll's certificate authority (SPEC §9): workload certificates issued by keyroll's own CA and
//! checked with reasons. Pure: keys, serials and `now` are given by the caller; no IO, no clock.

pub mod tls;
