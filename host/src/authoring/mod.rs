//! Tools for writing filters outside this repository: `gateway plugin new`
//! (a project to start from, in any of the four languages) and `gateway
//! plugin test` (a filter run against requests from a file, without a
//! gateway).

pub mod runner;
pub mod scaffold;
