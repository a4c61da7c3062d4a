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

/// Why a replication attempt or a version failed (DESIGN section 5): recorded with the failed
/// entry, counted in metrics, shown in the status view. The wire names are the variant names.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum FailureReason {
    /// The peer could not be reached (connection refused, DNS, reset).
    Unreachable,
    /// The peer did not answer or stopped sending in time.
    Timeout,
    /// The peer answered 5xx.
    ServerError,
    /// The peer throttled us (429, 503 SlowDown).
    Throttled,
    /// Credentials or permissions refused (401, 403).
    AccessDenied,
    /// The target bucket or container does not exist.
    NoSuchBucket,
    /// The bytes written are not the bytes read.
    ChecksumMismatch,
    /// The object is larger than the site accepts.
    TooLarge,
    /// The source cannot serve the version.
    SourceUnreadable,
    /// A `bucket_match` site already holds another source bucket's keys.
    NamespaceConflict,
    /// Any other refusal (4xx, a key the site cannot store).
    Rejected,
}

impl FailureReason {
    /// Every reason, in a fixed order.
    pub const ALL: [FailureReason; 11] = [
        FailureReason::Unreachable,
        FailureReason::Timeout,
        FailureReason::ServerError,
        FailureReason::Throttled,
        FailureReason::AccessDenied,
        FailureReason::NoSuchBucket,
        FailureReason::ChecksumMismatch,
        FailureReason::TooLarge,
        FailureReason::SourceUnreadable,
        FailureReason::NamespaceConflict,
        FailureReason::Rejected,
    ];

    /// The wire name (`Unreachable`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Unreachable => "Unreachable",
            FailureReason::Timeout => "Timeout",
            FailureReason::ServerError => "ServerError",
            FailureReason::Throttled => "Throttled",
            FailureReason::AccessDenied => "AccessDenied",
            FailureReason::NoSuchBucket => "NoSuchBucket",
            FailureReason::ChecksumMismatch => "ChecksumMismatch",
            FailureReason::TooLarge => "TooLarge",
            FailureReason::SourceUnreadable => "SourceUnreadable",
            FailureReason::NamespaceConflict => "NamespaceConflict",
            FailureReason::Rejected => "Rejected",
        }
    }

    /// The reason named `name`.
    pub fn from_name(name: &str) -> Option<FailureReason> {
        FailureReason::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
