//! The job state machine's vocabulary.

use serde::{Deserialize, Serialize};
use std::fmt;

/// queued → dispatched → running → succeeded | failed | cancelled | expired.
///
/// A job may also go from dispatched/running back to queued when its worker is
/// lost (a new attempt), and from queued straight to cancelled or expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Dispatched,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
}

impl JobStatus {
    pub const ALL: [JobStatus; 7] = [
        Self::Queued,
        Self::Dispatched,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Dispatched => "dispatched",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// A terminal state never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::Expired
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for JobMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the caller waits for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobMode {
    /// The HTTP call waits for the result (up to `timeout_ms`).
    Sync,
    /// The call answers 202 at once; the caller polls.
    Async,
}

impl JobMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Async => "async",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sync" => Some(Self::Sync),
            "async" => Some(Self::Async),
            _ => None,
        }
    }

    /// Sync callers are waiting, so their jobs go to the interactive lane by default.
    pub fn default_lane(self) -> Lane {
        match self {
            Self::Sync => Lane::Interactive,
            Self::Async => Lane::Batch,
        }
    }
}

/// Scheduling lane: interactive work is dispatched before batch work, and
/// batch work that has waited past the aging threshold is served regardless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    Interactive,
    Batch,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interactive => "interactive",
            Self::Batch => "batch",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "interactive" => Some(Self::Interactive),
            "batch" => Some(Self::Batch),
            _ => None,
        }
    }

    pub fn index(self) -> usize {
        match self {
            Self::Interactive => 0,
            Self::Batch => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_through_its_name() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        assert_eq!(JobStatus::parse("done"), None);
    }

    #[test]
    fn only_finished_states_are_terminal() {
        let terminal: Vec<_> = JobStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            vec![
                JobStatus::Succeeded,
                JobStatus::Failed,
                JobStatus::Cancelled,
                JobStatus::Expired
            ]
        );
    }

    #[test]
    fn sync_jobs_default_to_the_interactive_lane() {
        assert_eq!(JobMode::Sync.default_lane(), Lane::Interactive);
        assert_eq!(JobMode::Async.default_lane(), Lane::Batch);
    }
}

/// Job states, modes and lanes are `text` columns: each decodes from (and
/// encodes to) its name, so a row is typed when it is read.
#[cfg(feature = "sqlx")]
mod sql {
    use super::{JobMode, JobStatus, Lane};
    use sqlx::encode::IsNull;
    use sqlx::error::BoxDynError;
    use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
    use sqlx::{Decode, Encode, Postgres, Type};

    macro_rules! text_enum {
        ($t:ty) => {
            impl Type<Postgres> for $t {
                fn type_info() -> PgTypeInfo {
                    <&str as Type<Postgres>>::type_info()
                }
                fn compatible(ty: &PgTypeInfo) -> bool {
                    <&str as Type<Postgres>>::compatible(ty)
                }
            }

            impl<'r> Decode<'r, Postgres> for $t {
                fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                    let s = <&str as Decode<Postgres>>::decode(value)?;
                    <$t>::parse(s).ok_or_else(|| format!("unknown {} '{s}'", stringify!($t)).into())
                }
            }

            impl Encode<'_, Postgres> for $t {
                fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                    <&str as Encode<Postgres>>::encode_by_ref(&self.as_str(), buf)
                }
            }
        };
    }

    text_enum!(JobStatus);
    text_enum!(JobMode);
    text_enum!(Lane);
}
