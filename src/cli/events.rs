//! `sluice events`: the security events kept in Redis, oldest first, one JSON object a line (the
//! event's `id` and its fields); with `--follow`, then each new one as it arrives.

use std::process::ExitCode;

use crate::store::events::{Event, EventReader, EventsError};

pub(super) async fn events(url: &str, count: usize, follow: bool) -> ExitCode {
    match print_events(url, count, follow).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: events from {}: {e}", without_credentials(url));
            ExitCode::FAILURE
        }
    }
}

/// `url` with any `user:password@` left out, for messages: a credential is never printed.
fn without_credentials(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{host}")
        }
        None => url.rsplit_once('@').map_or(url, |(_, host)| host).to_owned(),
    }
}

/// Prints the newest `count` events; with `follow`, then waits for new ones until interrupted.
async fn print_events(url: &str, count: usize, follow: bool) -> Result<(), EventsError> {
    let mut reader = EventReader::connect(url).await?;
    // At least the newest event is fetched, printed or not, so that following starts right after it.
    let newest = reader.newest(count.max(1)).await?;
    for event in &newest[newest.len().saturating_sub(count)..] {
        print(event);
    }
    if !follow {
        return Ok(());
    }
    // After the newest event seen, or from the start of an empty stream.
    let mut last = newest.last().map(|e| e.id.clone());
    loop {
        for event in reader.follow(last.as_deref()).await? {
            print(&event);
            last = Some(event.id);
        }
    }
}

fn print(event: &Event) {
    let mut fields = serde_json::Map::new();
    fields.insert("id".into(), event.id.clone().into());
    for (field, value) in &event.fields {
        fields.insert(field.clone(), value.clone().into());
    }
    println!("{}", serde_json::Value::Object(fields));
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_never_reach_a_message() {
        assert_eq!(super::without_credentials("redis://:s3cret@10.0.0.5:6379/0"), "redis://10.0.0.5:6379/0");
        assert_eq!(super::without_credentials("rediss://user:p@ss@host:1"), "rediss://host:1");
        assert_eq!(super::without_credentials("redis://127.0.0.1:1"), "redis://127.0.0.1:1");
    }
}
