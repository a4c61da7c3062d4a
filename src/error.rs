//! Error vocabulary shared by stages: what the pipeline does with a failed attempt.

use std::time::Duration;

/// What the pipeline should do with an entry whose attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Transient: try again, no sooner than `after` if the remote said so.
    Retry {
        /// Delay asked by the remote.
        after: Option<Duration>,
    },
    /// Permanent for this entry: record FAILED for the site, keep the pipeline going.
    Fail,
}

/// An error and its sources, `: `-separated, for a one-line report.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}
