//! The firmware relay (issue 10, DESIGN §7): signed jobs from upstream → verified image → devices.

pub mod download;
