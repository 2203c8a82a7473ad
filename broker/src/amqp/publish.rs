//! Publishing with confirms on the shared confirm channel: inbound records, dead letters and
//! fan-out messages all go out this way.

use super::link::AmqpClient;
use crate::BrokerError;
use crate::pack::RECORDS_HEADER;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString};
use std::sync::Arc;

/// The header that carries an inbound record's or dead letter's key.
pub(crate) const KEY_HEADER: &str = "roomcast-key";

/// How a message is published.
pub(crate) struct Outgoing<'a> {
    pub(crate) exchange: &'a str,
    pub(crate) routing_key: &'a str,
    pub(crate) key: Option<&'a str>,
    /// The number of records packed into the message ([`RECORDS_HEADER`]), when several.
    pub(crate) records: Option<u32>,
    pub(crate) payload: &'a [u8],
    /// Delivery mode 2 (stored on disk by durable queues).
    pub(crate) persistent: bool,
    /// Unroutable messages are errors.
    pub(crate) mandatory: bool,
}

/// Publishes on the shared confirm channel and waits for the broker's confirm; many calls
/// share the channel at once (the confirms are pipelined).
pub(crate) async fn publish_confirmed(
    shared: &Arc<AmqpClient>,
    out: Outgoing<'_>,
) -> Result<(), BrokerError> {
    start_confirmed(shared, out).await?.await
}

/// Hands the message to the channel (its place in the channel's order is then fixed) and
/// returns the wait for its confirm.
pub(crate) async fn start_confirmed(
    shared: &Arc<AmqpClient>,
    out: Outgoing<'_>,
) -> Result<crate::PendingPublish, BrokerError> {
    let session = shared.session()?;
    let mut properties =
        BasicProperties::default().with_delivery_mode(if out.persistent { 2 } else { 1 });
    if out.key.is_some() || out.records.is_some() {
        let mut headers = FieldTable::default();
        if let Some(key) = out.key {
            headers.insert(
                KEY_HEADER.into(),
                AMQPValue::LongString(LongString::from(key)),
            );
        }
        if let Some(records) = out.records {
            headers.insert(RECORDS_HEADER.into(), AMQPValue::LongUInt(records));
        }
        properties = properties.with_headers(headers);
    }
    let options = BasicPublishOptions {
        mandatory: out.mandatory,
        immediate: false,
    };
    let confirm = shared
        .timed(
            &session,
            "publishing",
            session.publisher.basic_publish(
                out.exchange,
                out.routing_key,
                options,
                out.payload,
                properties,
            ),
        )
        .await?;
    let shared = shared.clone();
    let exchange = out.exchange.to_owned();
    Ok(Box::pin(async move {
        let confirmation = match tokio::time::timeout(shared.config.confirm_timeout, confirm).await
        {
            Ok(Ok(confirmation)) => confirmation,
            Ok(Err(error)) => {
                return Err(shared.failed(&session, "waiting for a confirm", error));
            }
            Err(_) => {
                return Err(BrokerError::Unavailable(format!(
                    "RabbitMQ did not confirm a publish within {:?}",
                    shared.config.confirm_timeout
                )));
            }
        };
        settle_confirmation(confirmation, &exchange)
    }))
}

fn settle_confirmation(confirmation: Confirmation, exchange: &str) -> Result<(), BrokerError> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
            Err(BrokerError::Rejected(format!(
                "RabbitMQ returned the message from exchange {exchange}: {} {}",
                returned.reply_code, returned.reply_text
            )))
        }
        Confirmation::Nack(None) => Err(BrokerError::Unavailable(
            "RabbitMQ could not store the message (negative confirm)".into(),
        )),
        Confirmation::NotRequested => Err(BrokerError::Unavailable(
            "the publishing channel is not in confirm mode".into(),
        )),
    }
}
