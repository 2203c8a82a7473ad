//! Why a scenario could not run.

use crate::client::ConnectError;
use crate::member::ConnectFailures;
use crate::server::ServerError;
use thiserror::Error;

/// A scenario that could not run to the end.
#[derive(Debug, Error)]
pub enum ScenarioError {
    /// One connection could not be set up.
    #[error("connecting: {0}")]
    Connect(#[from] ConnectError),
    /// Some of many connections could not be set up.
    #[error("{0}")]
    Connections(ConnectFailures),
    /// The server's `/proc` entry could not be read (did it exit?).
    #[error("reading /proc: {0}")]
    Proc(#[from] std::io::Error),
    /// The server could not be started or stopped.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// Anything else that went wrong.
    #[error("{0}")]
    Failed(String),
}
