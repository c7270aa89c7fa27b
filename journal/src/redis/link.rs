//! One connection to Redis for the journal: the URL checked and redacted,
//! every call bounded, and failures said with what was being done.

use muster_core::url::redact_url;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, RedisError};
use tokio::time::timeout;

use super::REDIS_TIMEOUT;
use crate::error::StoreError;

/// A failure, and whether trying again may help.
pub(super) struct Failed {
    pub(super) error: StoreError,
    pub(super) transient: bool,
}

impl Failed {
    pub(super) fn last(error: StoreError) -> Failed {
        Failed {
            error,
            transient: false,
        }
    }
}

impl From<Failed> for StoreError {
    fn from(failed: Failed) -> StoreError {
        failed.error
    }
}

/// One Redis server: connected when first needed, and again after a
/// connection that failed.
pub(super) struct Link {
    pub(super) client: redis::Client,
    /// The URL with any password replaced, for messages.
    pub(super) shown: String,
    pub(super) connection: Option<MultiplexedConnection>,
}

impl Link {
    /// Checks the URL; connects later.
    pub(super) fn open(url: &str) -> Result<Link, StoreError> {
        let shown = redact_url(url);
        let bad = |reason: String| StoreError::BadUrl {
            url: shown.clone(),
            reason,
        };
        if !["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            return Err(bad("it must start with redis:// or rediss://".into()));
        }
        let client = redis::Client::open(url).map_err(|e| bad(e.to_string()))?;
        Ok(Link {
            client,
            shown,
            connection: None,
        })
    }

    pub(super) async fn connection(&mut self) -> Result<MultiplexedConnection, Failed> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT);
        let connecting = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        match timeout(REDIS_TIMEOUT, connecting).await {
            Ok(Ok(connection)) => {
                self.connection = Some(connection.clone());
                Ok(connection)
            }
            Ok(Err(e)) => Err(self.failed("connect", e)),
            Err(_) => Err(self.silent("connect")),
        }
    }

    /// Runs one command, within [`REDIS_TIMEOUT`].
    pub(super) async fn run<T: FromRedisValue>(
        &mut self,
        command: &redis::Cmd,
        doing: &str,
    ) -> Result<T, Failed> {
        let mut connection = self.connection().await?;
        match timeout(REDIS_TIMEOUT, command.query_async(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.failed(doing, e)),
            Err(_) => Err(self.silent(doing)),
        }
    }

    /// No answer in time: the connection is dropped, to be made again.
    pub(super) fn silent(&mut self, doing: &str) -> Failed {
        self.connection = None;
        Failed {
            error: StoreError::Redis {
                url: self.shown.clone(),
                doing: doing.to_owned(),
                reason: format!(
                    "no answer within {} (is Redis up, and reachable from here?)",
                    humantime::format_duration(REDIS_TIMEOUT)
                ),
            },
            transient: true,
        }
    }

    /// A Redis error: no connection, a dropped one, and a server still
    /// loading or failing over may pass (the connection is made again);
    /// anything else Redis answered (a wrong password, out of memory) will
    /// not.
    pub(super) fn failed(&mut self, doing: &str, error: RedisError) -> Failed {
        use redis::ErrorKind;
        let transient = error.is_connection_refusal()
            || error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            || matches!(
                error.kind(),
                ErrorKind::BusyLoadingError
                    | ErrorKind::TryAgain
                    | ErrorKind::ClusterDown
                    | ErrorKind::MasterDown
            );
        let reason = if error.is_connection_refusal() {
            "connection refused (is Redis up, and reachable from here?)".to_owned()
        } else {
            error.to_string()
        };
        if transient {
            self.connection = None;
        }
        Failed {
            error: StoreError::Redis {
                url: self.shown.clone(),
                doing: doing.to_owned(),
                reason,
            },
            transient,
        }
    }
}
