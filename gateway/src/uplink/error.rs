//! Why an uplink session ended in failure: a typed error the reconnect loop acts on (logs once
//! per distinct reason, counts, reports in status), rendered as an installer's sentence.

use crate::store::StoreError;
use crate::tls::ConnectProblem;

/// An MQTT session that failed; the uplink reconnects after its backoff.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Connecting or the connection failed (TLS, TCP, MQTT), explained by [`crate::tls::classify`].
    #[error("{message}")]
    Connection {
        /// What kind of failure: decides whether it is the same reason as the last one.
        problem: ConnectProblem,
        /// The installer's sentence.
        message: String,
    },
    /// The broker accepted TCP/TLS but sent no CONNACK in time.
    #[error("timed out waiting for the broker's CONNACK")]
    ConnackTimeout,
    /// The MQTT client's request queue is closed (its event loop is gone).
    #[error("MQTT client: {0}")]
    Client(#[from] rumqttc::ClientError),
    /// A store operation failed (the rows stay; the session restarts).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking task running a store operation panicked or was cancelled.
    #[error("store task failed: {0}")]
    StoreTask(String),
}

impl SessionError {
    /// A connection error, classified.
    pub fn connection(err: &rumqttc::ConnectionError) -> SessionError {
        let (problem, message) = crate::tls::classify(err);
        SessionError::Connection { problem, message }
    }

    /// Whether `self` is the same reason as `other` for the reconnect log (logged at warn once,
    /// then at debug while it repeats): the same kind, and for a connection failure the same
    /// [`ConnectProblem`] (for [`ConnectProblem::Other`], the same sentence).
    pub fn same_reason(&self, other: &SessionError) -> bool {
        use SessionError::*;
        match (self, other) {
            (
                Connection {
                    problem: a,
                    message: ma,
                },
                Connection {
                    problem: b,
                    message: mb,
                },
            ) => a == b && (*a != ConnectProblem::Other || ma == mb),
            (ConnackTimeout, ConnackTimeout) => true,
            (Client(_), Client(_)) => true,
            (Store(a), Store(b)) => a.to_string() == b.to_string(),
            (StoreTask(_), StoreTask(_)) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(problem: ConnectProblem, message: &str) -> SessionError {
        SessionError::Connection {
            problem,
            message: message.into(),
        }
    }

    #[test]
    fn the_same_kind_of_failure_is_the_same_reason_whatever_its_details() {
        // rustls names the verification time in the text, which changes at every retry.
        let a = conn(
            ConnectProblem::WaitingForTime {
                valid_from: Some(100),
            },
            "waiting for time (now 1)",
        );
        let b = conn(
            ConnectProblem::WaitingForTime {
                valid_from: Some(100),
            },
            "waiting for time (now 2)",
        );
        assert!(a.same_reason(&b));
        assert!(SessionError::ConnackTimeout.same_reason(&SessionError::ConnackTimeout));
    }

    #[test]
    fn different_kinds_and_different_unclassified_texts_are_new_reasons() {
        let refused = conn(ConnectProblem::Refused, "connection refused");
        let cert = conn(ConnectProblem::ClientCertRefused, "refused our certificate");
        assert!(!refused.same_reason(&cert));
        assert!(!refused.same_reason(&SessionError::ConnackTimeout));
        let reset = conn(ConnectProblem::Other, "connection reset");
        let eof = conn(ConnectProblem::Other, "unexpected eof");
        assert!(!reset.same_reason(&eof));
        assert!(reset.same_reason(&conn(ConnectProblem::Other, "connection reset")));
        assert_eq!(
            SessionError::ConnackTimeout.to_string(),
            "timed out waiting for the broker's CONNACK"
        );
    }
}
