//! The backend-independent contract test suite.
//!
//! A backend's tests implement [`BrokerFactory`] and invoke
//! [`contract_tests!`](crate::contract_tests!)
//! (`roomcast_broker::contract_tests!(MyFactory::new());`), which expands into one
//! `#[tokio::test]` per contract test, so that failures are reported one by one. The crate that
//! invokes it needs `tokio` (with the `macros` and `rt-multi-thread` features) among its
//! dev-dependencies.
//!
//! Every test uses random keys, groups and rooms, and waits for events with timeouts; only
//! the checks that something does *not* arrive wait for a short quiet period.
//!
//! # Layout
//! - this file: [`BrokerFactory`], [`contract_tests!`](crate::contract_tests!) and the
//!   timeouts.
//! - `urls`: test broker URLs from the environment, random names.
//! - `helpers`: waiting for deliveries and messages, test records, draining in order.
//! - `events`: inbound events for tests, and publishing rounds of them.
//! - [`cases`]: the contract tests themselves (inbound stream, fan-out, lifecycle).

mod events;
mod helpers;
mod urls;

pub use events::*;
pub use helpers::*;
pub use urls::*;

pub mod cases;

use crate::Broker;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// Creates the brokers the contract tests run against.
#[async_trait]
pub trait BrokerFactory: Send + Sync {
    /// A broker on fresh, randomly named streams, queues or topics.
    async fn fresh(&self) -> Arc<dyn Broker>;
    /// A new broker instance on the same streams as `prev` (a process restart). The test has
    /// dropped its streams and subscriptions; the factory closes `prev` (see
    /// [`Broker::close`]) before opening the new instance.
    async fn reopen(&self, prev: Arc<dyn Broker>) -> Arc<dyn Broker>;
}

/// Expands into one `#[tokio::test]` per contract test, each running against brokers made by
/// `$factory` (an expression evaluated once per test, whose type implements
/// [`BrokerFactory`](crate::testkit::BrokerFactory)).
///
/// `contract_tests!(optional $factory)` takes a future of `Option<factory>` instead: a test
/// whose future yields `None` (no test broker, outside CI) returns without running.
#[macro_export]
macro_rules! contract_tests {
    (@list $mode:ident $factory:expr) => {
        $crate::contract_tests!(@each $mode $factory;
            publish_then_consume,
            next_batch_respects_max,
            per_key_order_with_concurrent_publishers,
            concurrent_publishes_all_consumed,
            competing_consumers_share_records_once,
            nack_redelivers_before_later_records,
            dropped_stream_records_are_redelivered,
            reopen_redelivers_only_unacked,
            attempts_survive_reopen,
            fanout_delivers_subscribed_rooms_in_order,
            fanout_unsubscribe_stops_delivery,
            fanout_reaches_every_subscription,
            dead_letter_and_health,
            close_ends_streams_and_subscriptions,
        );
    };
    (@each always $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let factory = $factory;
                $crate::testkit::cases::$name(&factory).await;
            }
        )*
    };
    (@each optional $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(factory) = $factory.await else { return };
                $crate::testkit::cases::$name(&factory).await;
            }
        )*
    };
    (optional $factory:expr) => {
        $crate::contract_tests!(@list optional $factory);
    };
    ($factory:expr) => {
        $crate::contract_tests!(@list always $factory);
    };
}

/// How long a test waits for something that must happen.
pub const WAIT: Duration = Duration::from_secs(20);

/// How long a test waits to conclude that something does not happen.
pub const QUIET: Duration = Duration::from_millis(300);
