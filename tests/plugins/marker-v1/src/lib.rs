//! Marks responses with version v1; the code is in ../marker/marker.rs.

const VERSION: &str = "v1";

include!("../../marker/marker.rs");
