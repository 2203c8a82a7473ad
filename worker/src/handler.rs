//! Event handlers: what the worker does with each event kind.
//!
//! [`Handlers`] maps event names to [`EventHandler`]s and falls back to a default, which
//! stores every event and fans it out to its room ([`StoreAndFanout`]). A handler decides
//! before the event is stored:
//! - `Ok(`[`Disposition::Deliver`]`)`: store it (seq, deduplication) and fan it out;
//! - `Ok(`[`Disposition::Drop`]`)`: acknowledge it without storing it;
//! - `Err(`[`HandlerError::Permanent`]`)`: the event can never be processed: it goes to the
//!   dead-letter sink with the reason;
//! - `Err(`[`HandlerError::Transient`]`)`: try again later; after the worker's
//!   `max_attempts` the event is dead-lettered with this error as the reason.
//!
//! Events are redelivered after a crash or a retry, so a handler may see an event more than
//! once and should be idempotent.
//!
//! Adding a handler for one event kind takes a few lines:
//!
//! ```
//! use roomcast_worker::handler::{Disposition, HandlerError, Handlers};
//!
//! let handlers = Handlers::new()
//!     // Typing indicators are not worth keeping.
//!     .on_fn("typing", |_event| Ok(Disposition::Drop))
//!     // Clients may not publish `shutdown` events.
//!     .on_fn("shutdown", |event| {
//!         Err(HandlerError::Permanent(format!("{} may not publish `shutdown`", event.from)))
//!     });
//! assert_eq!(handlers.event_names().collect::<Vec<_>>(), ["shutdown", "typing"]);
//! ```
//!
//! A handler that needs to await something implements [`EventHandler`]:
//!
//! ```
//! use async_trait::async_trait;
//! use roomcast_schemas::InboundEvent;
//! use roomcast_worker::handler::{Disposition, EventHandler, HandlerError, Handlers};
//!
//! struct Moderation;
//!
//! #[async_trait]
//! impl EventHandler for Moderation {
//!     async fn handle(&self, event: &InboundEvent) -> Result<Disposition, HandlerError> {
//!         // e.g. ask a moderation service; map its outage to `Transient`.
//!         if event.data.get().contains("forbidden") {
//!             return Err(HandlerError::Permanent("rejected by moderation".into()));
//!         }
//!         Ok(Disposition::Deliver)
//!     }
//! }
//!
//! let handlers = Handlers::new().on("chat", Moderation);
//! ```

use async_trait::async_trait;
use roomcast_schemas::InboundEvent;
use std::collections::BTreeMap;
use std::sync::Arc;
use thiserror::Error;

/// What to do with an event that a handler accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Store the event (next seq of its room, deduplicated by `(from, id)`) and fan it out.
    Deliver,
    /// Acknowledge the event without storing or fanning it out.
    Drop,
}

/// Why a handler did not accept an event.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum HandlerError {
    /// The event can never be processed: dead-letter it with this reason.
    #[error("{0}")]
    Permanent(String),
    /// Processing failed for now: retry later (dead-lettered after the last attempt).
    #[error("{0}")]
    Transient(String),
}

/// Handles the events of one kind (or, as the default, of every kind without its own).
#[async_trait]
pub trait EventHandler: Send + Sync {
    /// Decides what happens to `event`; called before it is stored.
    async fn handle(&self, event: &InboundEvent) -> Result<Disposition, HandlerError>;
}

/// The default handler: every event is stored and fanned out to its room.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreAndFanout;

#[async_trait]
impl EventHandler for StoreAndFanout {
    async fn handle(&self, _event: &InboundEvent) -> Result<Disposition, HandlerError> {
        Ok(Disposition::Deliver)
    }
}

/// An [`EventHandler`] made of a synchronous function (see [`Handlers::on_fn`]).
pub struct FnHandler<F>(pub F);

impl<F> std::fmt::Debug for FnHandler<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnHandler")
    }
}

#[async_trait]
impl<F> EventHandler for FnHandler<F>
where
    F: Fn(&InboundEvent) -> Result<Disposition, HandlerError> + Send + Sync,
{
    async fn handle(&self, event: &InboundEvent) -> Result<Disposition, HandlerError> {
        (self.0)(event)
    }
}

/// The handler registry: one handler per event name, and a default for the rest.
///
/// Cheap to clone (handlers are shared).
#[derive(Clone)]
pub struct Handlers {
    by_event: BTreeMap<String, Arc<dyn EventHandler>>,
    default: Arc<dyn EventHandler>,
}

impl Default for Handlers {
    fn default() -> Self {
        Handlers {
            by_event: BTreeMap::new(),
            default: Arc::new(StoreAndFanout),
        }
    }
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers")
            .field("events", &self.by_event.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Handlers {
    /// A registry where every event is stored and fanned out ([`StoreAndFanout`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Handles events named `event` with `handler` (replacing an earlier one).
    pub fn on(mut self, event: impl Into<String>, handler: impl EventHandler + 'static) -> Self {
        self.by_event.insert(event.into(), Arc::new(handler));
        self
    }

    /// Handles events named `event` with a synchronous function.
    pub fn on_fn<F>(self, event: impl Into<String>, handler: F) -> Self
    where
        F: Fn(&InboundEvent) -> Result<Disposition, HandlerError> + Send + Sync + 'static,
    {
        self.on(event, FnHandler(handler))
    }

    /// Handles the events that have no handler of their own with `handler`.
    pub fn with_default(mut self, handler: impl EventHandler + 'static) -> Self {
        self.default = Arc::new(handler);
        self
    }

    /// The handler for events named `event`.
    pub fn get(&self, event: &str) -> &dyn EventHandler {
        self.by_event
            .get(event)
            .map_or(&*self.default, |handler| &**handler)
    }

    /// The event names with a handler of their own, in name order.
    pub fn event_names(&self) -> impl Iterator<Item = &str> {
        self.by_event.keys().map(String::as_str)
    }

    /// Runs the handler for `event`.
    pub async fn handle(&self, event: &InboundEvent) -> Result<Disposition, HandlerError> {
        self.get(&event.event).handle(event).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_schemas::{ENVELOPE_VERSION, EventId, EventName, RoomName, UserId};
    use serde_json::value::RawValue;

    fn event(name: &str) -> InboundEvent {
        InboundEvent {
            v: ENVELOPE_VERSION,
            id: EventId::new("1").unwrap(),
            room: RoomName::new("r").unwrap(),
            event: EventName::new(name).unwrap(),
            from: UserId::new("u").unwrap(),
            ts: 0,
            data: RawValue::from_string("{}".into()).unwrap(),
        }
    }

    #[tokio::test]
    async fn dispatches_by_event_name_with_a_default() {
        let handlers = Handlers::new()
            .on_fn("typing", |_| Ok(Disposition::Drop))
            .on_fn("bad", |e| {
                Err(HandlerError::Permanent(format!("no {}", e.event)))
            })
            .on_fn("later", |_| Err(HandlerError::Transient("busy".into())));
        assert_eq!(
            handlers.handle(&event("chat")).await,
            Ok(Disposition::Deliver)
        );
        assert_eq!(
            handlers.handle(&event("typing")).await,
            Ok(Disposition::Drop)
        );
        assert_eq!(
            handlers.handle(&event("bad")).await,
            Err(HandlerError::Permanent("no bad".into()))
        );
        assert_eq!(
            handlers.handle(&event("later")).await,
            Err(HandlerError::Transient("busy".into()))
        );

        let strict = handlers.with_default(FnHandler(|_: &InboundEvent| Ok(Disposition::Drop)));
        assert_eq!(strict.handle(&event("chat")).await, Ok(Disposition::Drop));
        assert_eq!(
            strict.handle(&event("bad")).await,
            Err(HandlerError::Permanent("no bad".into()))
        );
    }

    #[tokio::test]
    async fn a_later_registration_replaces_an_earlier_one() {
        let handlers = Handlers::new()
            .on_fn("x", |_| Ok(Disposition::Drop))
            .on("x", StoreAndFanout);
        assert_eq!(handlers.handle(&event("x")).await, Ok(Disposition::Deliver));
        assert_eq!(handlers.event_names().collect::<Vec<_>>(), ["x"]);
    }
}
