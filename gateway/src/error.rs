//! Errors of building and serving a gateway.

use crate::auth::AuthConfigError;
use crate::config::ConfigError;
use roomcast_broker::BrokerError;
use thiserror::Error;

/// Why a gateway could not start or stopped serving.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// A setting cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The token verification settings cannot work (e.g. a key that does not parse).
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    /// The fan-out subscription could not be opened.
    #[error("opening the fan-out subscription failed: {0}")]
    Broker(#[from] BrokerError),
    /// The HTTP server failed.
    #[error("serving HTTP failed: {0}")]
    Serve(#[source] std::io::Error),
}
