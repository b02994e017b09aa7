//! What the benchmarks share.

/// The peak resident memory of this process so far, in MB (the library's, which
/// `silkie bench` reports too).
pub use silkie::train::bench::peak_rss_mb;
