//! Reading the security event stream (`EVENTS_STREAM`) that the Redis store appends to: the newest
//! events, then, to follow the stream, each new one as it arrives. This is for operators
//! (`sluice events`); the decision path only writes events (`Store::security_event`).

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};

use super::EVENTS_STREAM;

/// How long one `follow` waits for a new event before answering none.
pub const FOLLOW_BLOCK: Duration = Duration::from_secs(5);

/// Events read at most by one `follow`.
const FOLLOW_BATCH: usize = 100;

/// One event: its ID in the stream and its fields, as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub fields: Vec<(String, String)>,
}

/// Redis could not be reached, or refused a read; the text is Redis's own.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct EventsError(#[from] redis::RedisError);

/// A connection to the (standalone) Redis that holds the stream.
pub struct EventReader {
    conn: MultiplexedConnection,
}

impl EventReader {
    pub async fn connect(url: &str) -> Result<EventReader, EventsError> {
        // A blocking XREAD answers only when an event arrives or its BLOCK ends, so the connection
        // must wait longer than the BLOCK: the client's default response timeout (500 ms) would end
        // following after half a second of quiet. A Redis that stops answering altogether is still
        // noticed, a few seconds after the BLOCK.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(FOLLOW_BLOCK * 2));
        let conn = redis::Client::open(url)?.get_multiplexed_async_connection_with_config(&config).await?;
        Ok(EventReader { conn })
    }

    /// The newest `count` events, oldest first.
    pub async fn newest(&mut self, count: usize) -> Result<Vec<Event>, EventsError> {
        let reply: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(EVENTS_STREAM)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn)
            .await?;
        Ok(reply.ids.iter().rev().map(event).collect())
    }

    /// The events after the one whose ID is `after` (`None`: from the start of the stream), oldest
    /// first, waiting up to `FOLLOW_BLOCK` for one to come; none when none came. Unlike XREAD's `$`,
    /// an ID never misses an event written between two reads.
    pub async fn follow(&mut self, after: Option<&str>) -> Result<Vec<Event>, EventsError> {
        let block_ms = usize::try_from(FOLLOW_BLOCK.as_millis()).unwrap_or(usize::MAX);
        let options = StreamReadOptions::default().block(block_ms).count(FOLLOW_BATCH);
        let after = after.unwrap_or("0-0");
        let reply: Option<StreamReadReply> =
            redis::AsyncCommands::xread_options(&mut self.conn, &[EVENTS_STREAM], &[after], &options).await?;
        let keys = reply.map(|r| r.keys).unwrap_or_default();
        Ok(keys.iter().flat_map(|key| &key.ids).map(event).collect())
    }
}

fn event(entry: &StreamId) -> Event {
    let fields = entry
        .map
        .iter()
        .map(|(field, value)| (field.clone(), redis::from_redis_value_ref(value).unwrap_or_default()))
        .collect();
    Event { id: entry.id.clone(), fields }
}
