//! Marks responses with version v2; the code is in ../marker/marker.rs.

const VERSION: &str = "v2";

include!("../../marker/marker.rs");
