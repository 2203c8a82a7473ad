//! The steps of a batch: decode and handle, store, dead-letter, settle (fan-out is in
//! `fanout`).

use super::batch::{Batch, Item, State};
use super::decode::decode;
use super::retry::RetryQueue;
use super::{Failure, Worker, WorkerCounters, is_fatal};
use crate::handler::{Disposition, HandlerError};
use bytes::Bytes;
use futures_util::future::join_all;
use roomcast_broker::Delivery;
use roomcast_schemas::{DeadLetter, ENVELOPE_VERSION, now_ms};
use roomcast_store::StoreError;
use std::collections::HashSet;

impl Worker {
    /// Step 1: decode each delivery and run its handler.
    pub(super) async fn handle(&self, batch: &mut Batch) {
        let max_attempts = self.config.max_attempts;
        for item in &mut batch.items {
            let attempt = item.delivery.attempt;
            if batch.held.contains(&item.delivery.key) {
                item.state = State::Blocked;
            } else if attempt > max_attempts {
                item.state = State::DeadLetter(format!(
                    "delivered {attempt} times without being settled (max_attempts is \
                     {max_attempts}); the worker stopped or crashed while processing it"
                ));
            } else {
                match decode(&item.delivery) {
                    Err(reason) => item.state = State::DeadLetter(reason),
                    Ok(event) => match self.handlers.handle(&event).await {
                        Ok(Disposition::Deliver) => item.state = State::Pending(event),
                        Ok(Disposition::Drop) => {
                            batch.tally.dropped += 1;
                            item.state = State::Done;
                        }
                        Err(HandlerError::Permanent(reason)) => {
                            item.state = State::DeadLetter(format!(
                                "rejected by the `{}` handler: {reason}",
                                event.event
                            ));
                        }
                        Err(HandlerError::Transient(reason)) => {
                            let reason = format!("the `{}` handler failed: {reason}", event.event);
                            self.fail(item, &mut batch.held, &mut batch.tally, reason);
                        }
                    },
                }
            }
        }
    }

    /// Steps 2–4, resumable: each step only works on the items the previous run left.
    pub(super) async fn advance(&self, batch: &mut Batch) -> Result<(), Failure> {
        self.append(batch).await?;
        self.publish(batch).await?;
        self.dead_letter(batch).await
    }

    /// Step 2: store the pending events, in one transaction when possible.
    async fn append(&self, batch: &mut Batch) -> Result<(), Failure> {
        let pending: Vec<usize> = (0..batch.items.len())
            .filter(|&i| matches!(batch.items[i].state, State::Pending(_)))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        // Move the events out for the append; they go back on failure.
        let mut events = Vec::with_capacity(pending.len());
        for &i in &pending {
            if let State::Pending(event) =
                std::mem::replace(&mut batch.items[i].state, State::Received)
            {
                events.push(event);
            }
        }
        let error = match self.store.append(&events).await {
            Ok(results) => {
                for (&i, appended) in pending.iter().zip(results) {
                    batch.stored(i, appended);
                }
                return Ok(());
            }
            Err(error) => error,
        };
        for (&i, event) in pending.iter().zip(events) {
            batch.items[i].state = State::Pending(event);
        }
        self.check_store(&error).await?;
        if pending.len() == 1 {
            let reason = format!("storing the event failed: {error}");
            self.fail(
                &mut batch.items[pending[0]],
                &mut batch.held,
                &mut batch.tally,
                reason,
            );
            return Ok(());
        }
        // The store answers, so one of the events is at fault: store them one by one so that
        // only that event (and its room's later events) is retried.
        tracing::warn!(%error, events = pending.len(), "batch append failed; appending one by one");
        for i in pending {
            if batch.held.contains(&batch.items[i].delivery.key) {
                batch.items[i].state = State::Blocked;
                continue;
            }
            let State::Pending(event) = &batch.items[i].state else {
                continue;
            };
            match self.store.append(std::slice::from_ref(event)).await {
                Ok(mut results) => match results.pop() {
                    Some(appended) => batch.stored(i, appended),
                    None => {
                        let reason = "the store returned no result".to_owned();
                        self.fail(
                            &mut batch.items[i],
                            &mut batch.held,
                            &mut batch.tally,
                            reason,
                        );
                    }
                },
                Err(error) => {
                    self.check_store(&error).await?;
                    let reason = format!("storing the event failed: {error}");
                    self.fail(
                        &mut batch.items[i],
                        &mut batch.held,
                        &mut batch.tally,
                        reason,
                    );
                }
            }
        }
        Ok(())
    }

    /// An outage when the store does not answer a ping after `error`.
    async fn check_store(&self, error: &StoreError) -> Result<(), Failure> {
        match self.store.ping().await {
            Ok(()) => Ok(()),
            Err(_) => Err(Failure::Outage(format!("store unavailable: {error}"))),
        }
    }

    /// Step 4: write the dead letters.
    async fn dead_letter(&self, batch: &mut Batch) -> Result<(), Failure> {
        for item in &mut batch.items {
            let State::DeadLetter(reason) = &item.state else {
                continue;
            };
            let delivery = &item.delivery;
            let letter = DeadLetter {
                v: ENVELOPE_VERSION,
                reason: reason.clone(),
                attempts: delivery.attempt,
                ts: now_ms(),
                key: delivery.key.clone(),
                payload: String::from_utf8_lossy(&delivery.payload).into_owned(),
            };
            let payload = serde_json::to_vec(&letter).map_err(|error| {
                Failure::Outage(format!("cannot encode a dead letter: {error}"))
            })?;
            match self
                .broker
                .dead_letters
                .dead_letter(&delivery.key, Bytes::from(payload))
                .await
            {
                Ok(()) => {
                    tracing::error!(
                        key = %delivery.key,
                        attempts = delivery.attempt,
                        %reason,
                        "event dead-lettered"
                    );
                    batch.tally.dead_lettered += 1;
                    item.state = State::Done;
                }
                Err(error) if is_fatal(&error) => return Err(Failure::Fatal(error)),
                Err(error) => {
                    return Err(Failure::Outage(format!(
                        "dead-letter write failed: {error}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// An event failed on its own: retry it (holding its room) or, on its last attempt,
    /// dead-letter it.
    pub(super) fn fail(
        &self,
        item: &mut Item,
        held: &mut HashSet<String>,
        tally: &mut WorkerCounters,
        reason: String,
    ) {
        let attempt = item.delivery.attempt;
        let max_attempts = self.config.max_attempts;
        if attempt >= max_attempts {
            item.state = State::DeadLetter(format!("failed {attempt} times; last error: {reason}"));
        } else {
            tracing::warn!(key = %item.delivery.key, attempt, max_attempts, %reason, "event failed; it will be retried");
            tally.retried += 1;
            held.insert(item.delivery.key.clone());
            item.state = State::Retry;
        }
    }

    /// Step 5: ack what is done, nack the rest (after a backoff for retried events).
    pub(super) async fn settle(&self, batch: Batch, retries: &mut RetryQueue) {
        let Batch { items, held, tally } = batch;
        let mut acks = Vec::new();
        let mut now = Vec::new();
        let mut later = Vec::new();
        let mut retry_attempt = 0;
        for item in items {
            match item.state {
                State::Done => acks.push(item.delivery),
                State::Retry => {
                    retry_attempt = retry_attempt.max(item.delivery.attempt);
                    later.push(item.delivery);
                }
                // A held room's deliveries are nacked together, in order.
                _ if held.contains(&item.delivery.key) => later.push(item.delivery),
                // Unfinished: the batch was abandoned on shutdown or a fatal broker error.
                _ => now.push(item.delivery),
            }
        }
        let failed_acks = join_all(acks.into_iter().map(Delivery::ack))
            .await
            .into_iter()
            .filter_map(Result::err)
            .inspect(|error| tracing::debug!(%error, "ack failed"))
            .count();
        if failed_acks > 0 {
            tracing::warn!(
                failed_acks,
                "acks failed; those events will be redelivered and deduplicated"
            );
        }
        for delivery in now {
            if let Err(error) = delivery.nack().await {
                tracing::debug!(%error, "nack failed; the delivery is released when the stream closes");
            }
        }
        if !later.is_empty() {
            retries.schedule(later, self.config.backoff(retry_attempt.max(1)));
        }
        self.counters.send_modify(|counters| counters.add(&tally));
    }
}
