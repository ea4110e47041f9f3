//! Compose files: loading, interpolation, merging, validation and normalization (pure; the only user of serde_yaml).
