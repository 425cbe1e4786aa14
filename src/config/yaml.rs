//! What a YAML text expands to, before anything reads it whole. An alias repeats the node its
//! anchor names, so a file of a few hundred bytes can stand for billions of nodes (ten aliases of
//! ten aliases of ...): the `config` crate would expand them all, and the process would run out
//! of memory on a reload, where a bad file must keep the old configuration serving. So a text's
//! nodes are counted from the parser's events, each alias as the size of its anchor, and a text of
//! more than `MOST_NODES` is refused. `as_json` reads a text so checked.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// More nodes than any configuration or domain file needs (a domain file of 10,000 descriptors
/// holds about 100,000).
pub const MOST_NODES: u64 = 1_000_000;

/// `Err` naming the bound when `text`, its aliases expanded, holds more than `MOST_NODES` nodes.
/// A text that does not parse passes: the reader that follows says what is wrong with it.
pub fn check_size(text: &str) -> Result<(), String> {
    let mut count = Counter::default();
    if Parser::new_from_str(text).load(&mut count, true).is_err() {
        return Ok(());
    }
    if count.total > MOST_NODES {
        return Err(format!(
            "the YAML expands to more than {MOST_NODES} nodes (aliases repeat what their anchors name)"
        ));
    }
    Ok(())
}

/// Nodes by open collection, and the size of every anchor seen.
/// YAML text as a JSON tree, its size checked first, read by the `config` crate as the main
/// configuration is, so that every file takes the same YAML.
pub fn as_json(text: &str) -> Result<serde_json::Value, String> {
    check_size(text)?;
    let value = ::config::Config::builder()
        .add_source(::config::File::from_str(text, ::config::FileFormat::Yaml))
        .build()
        .map_err(|e| e.to_string())?;
    value.try_deserialize::<serde_json::Value>().map_err(|e| e.to_string())
}

#[derive(Default)]
struct Counter {
    /// Open sequences and mappings: their anchor and their nodes so far (themselves included).
    open: Vec<(usize, u64)>,
    anchors: HashMap<usize, u64>,
    total: u64,
}

impl Counter {
    fn add(&mut self, nodes: u64) {
        match self.open.last_mut() {
            Some((_, count)) => *count = count.saturating_add(nodes),
            None => self.total = self.total.saturating_add(nodes),
        }
    }
}

impl MarkedEventReceiver for Counter {
    fn on_event(&mut self, event: Event, _mark: Marker) {
        match event {
            Event::Scalar(_, _, anchor, _) => {
                if anchor > 0 {
                    self.anchors.insert(anchor, 1);
                }
                self.add(1);
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => self.open.push((anchor, 1)),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, count)) = self.open.pop() {
                    if anchor > 0 {
                        self.anchors.insert(anchor, count);
                    }
                    self.add(count);
                }
            }
            Event::Alias(anchor) => {
                let size = self.anchors.get(&anchor).copied().unwrap_or(1);
                self.add(size);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alias_bomb_is_refused_before_it_expands() {
        // Ten of ten of ... seven deep: 10^7 leaves from 600 bytes.
        let mut bomb = String::from("domain: d\nl0: &l0 [x, x, x, x, x, x, x, x, x, x]\n");
        for n in 1..=7 {
            let prev = format!("*l{}", n - 1);
            bomb.push_str(&format!("l{n}: &l{n} [{}]\n", [prev.as_str(); 10].join(", ")));
        }
        let refused = std::time::Instant::now();
        assert!(check_size(&bomb).expect_err("a bomb").contains("more than 1000000 nodes"));
        assert!(refused.elapsed() < std::time::Duration::from_secs(1), "counted, not expanded");
        // Ordinary anchors and merge keys pass.
        let ordinary = "base: &b {unit: minute, requests_per_unit: 5}\ndescriptors:\n  - key: a\n    rate_limit: {<<: *b}\n";
        assert!(check_size(ordinary).is_ok());
        assert!(check_size("not: [valid").is_ok(), "left to the reader to refuse");
    }
}
