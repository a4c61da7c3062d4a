//! Error vocabulary shared by stages: what the pipeline does with a failed attempt
//! ([`Disposition`]) and why it failed ([`FailureReason`], the closed set of DESIGN section 5).

use std::time::Duration;

use serde::{Deserialize, Serialize};

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

/// Why a copy attempt or a version failed (DESIGN section 5): one closed set, recorded with a
/// failed entry, counted in metrics by reason, shown in `GET status`. Serialized, and printed
/// by [`FailureReason::as_str`], as the variant's name (`"Timeout"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FailureReason {
    /// The peer refused or dropped the connection, or its name did not resolve.
    Unreachable,
    /// No answer, or no progress, within a deadline (a frozen peer).
    Timeout,
    /// The peer answered a 5xx.
    ServerError,
    /// The peer asked us to slow down (503 SlowDown, 429).
    Throttled,
    /// The peer refused our credentials or permissions (401, 403).
    AccessDenied,
    /// The target bucket or container does not exist.
    NoSuchBucket,
    /// The bytes written differ from the source's (MD5 or ETag mismatch).
    ChecksumMismatch,
    /// The object is larger than the site accepts.
    TooLarge,
    /// The source could not serve the version.
    SourceUnreadable,
    /// The replica's key at a `bucket_match` site belongs to another source bucket.
    NamespaceConflict,
    /// Any other refusal (other 4xx, a key the site kind cannot store).
    Rejected,
}

impl FailureReason {
    /// Every reason, in declaration order (the order metrics list them in).
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

    /// The reason's name, as DESIGN section 5 spells it.
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

    /// The reason named `name` (exactly as [`FailureReason::as_str`] spells it).
    pub fn parse(name: &str) -> Option<FailureReason> {
        FailureReason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Position in [`FailureReason::ALL`] (for per-reason counter arrays).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_are_named_as_the_design_spells_them_in_text_and_json() {
        let names = [
            "Unreachable",
            "Timeout",
            "ServerError",
            "Throttled",
            "AccessDenied",
            "NoSuchBucket",
            "ChecksumMismatch",
            "TooLarge",
            "SourceUnreadable",
            "NamespaceConflict",
            "Rejected",
        ];
        for (i, (r, name)) in FailureReason::ALL.iter().zip(names).enumerate() {
            assert_eq!(r.as_str(), name);
            assert_eq!(r.index(), i);
            assert_eq!(r.to_string(), name);
            assert_eq!(FailureReason::parse(name), Some(*r));
            let json = serde_json::to_string(r).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<FailureReason>(&json).unwrap(), *r);
        }
        assert_eq!(FailureReason::parse("timeout"), None);
    }
}
