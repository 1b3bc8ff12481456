//! What the scenarios share: upstreams on loopback, a gateway child
//! process started with a written configuration, and scrapes of its metrics.
