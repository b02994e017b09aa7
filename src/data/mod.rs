//! Preference data: the released VLFeedback format, ratings, scores, pairs and their data
//! reports. Pure functions over polars tables; stage kinds wrap them.

pub mod aggregate;
pub mod error;
pub mod frame;
pub mod images;
pub mod judge;
pub mod pairs;
pub mod rating;
pub mod report;
pub mod stats;
pub mod trl;
pub mod vlfeedback;

pub use error::DataError;
