//! How a session ended, read from the reason its `SessionClosed` event gives.
//!
//! A session is `completed` when its client ended it: it sent Terminate
//! ("client closed the session"), closed its connection ("the client went
//! away", also while a statement was held), or its connection failed
//! ("connection lost: ..."). Every other reason is Airlock's (or the
//! target's) doing: the grant was revoked or expired, masking rules arrived,
//! the recording failed, the worker stopped or restarted, the target closed or
//! lost its connection, a protocol violation. Such sessions are `terminated`.

use serde::{Deserialize, Serialize};

/// The reason a worker records when the client sent Terminate.
pub const CLIENT_CLOSED: &str = "client closed the session";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Not closed yet.
    Open,
    /// The client ended it.
    Completed,
    /// Airlock ended it.
    Terminated,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Open => "open",
            Outcome::Completed => "completed",
            Outcome::Terminated => "terminated",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        match s {
            "open" => Some(Outcome::Open),
            "completed" => Some(Outcome::Completed),
            "terminated" => Some(Outcome::Terminated),
            _ => None,
        }
    }
}

/// The outcome of a session closed for `reason`.
pub fn outcome_of(reason: &str) -> Outcome {
    if reason == CLIENT_CLOSED || reason.starts_with("the client went away") || reason.starts_with("connection lost:") {
        Outcome::Completed
    } else {
        Outcome::Terminated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_completes_airlock_terminates() {
        for reason in [
            "client closed the session",
            "the client went away",
            "the client went away while a statement was held",
            "connection lost: Connection reset by peer (os error 104)",
        ] {
            assert_eq!(outcome_of(reason), Outcome::Completed, "{reason}");
        }
        for reason in [
            "access ended: grant 0190 was revoked",
            "access ended: grant 0190 expired",
            "the gateway is shutting down",
            "worker restarted",
            "session recording is unavailable (the recorder did not store the statement in time)",
            "masking rules now cover this connection; reconnect to continue under them",
            "pg closed the connection",
            "connection to the target lost: broken pipe",
            "",
        ] {
            assert_eq!(outcome_of(reason), Outcome::Terminated, "{reason}");
        }
        assert_eq!(Outcome::parse("completed").map(|o| o.as_str()), Some("completed"));
        assert_eq!(Outcome::parse("closed"), None);
    }
}
