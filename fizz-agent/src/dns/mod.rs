//! The cluster DNS server (the only user of hickory).
