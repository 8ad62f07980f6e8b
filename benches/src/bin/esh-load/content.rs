//! The content of every message the generator sends carries the run, a sequence number and
//! two timestamps, so that the recipient computes end-to-end latency and spots losses and
//! duplicates without any side channel.

/// What a received message tells about its send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) seq: u64,
    /// When the open-loop schedule wanted it sent (µs on the generator clock).
    pub(crate) sched_us: u64,
    /// When it was actually written to the socket.
    pub(crate) sent_us: u64,
}

const TAG: &str = "eshload:";

/// `eshload:{run}:{seq}:{sched}:{sent}:` in hex, padded with `x` to `size` characters.
pub(crate) fn content(run: u32, stamp: Stamp, size: usize) -> String {
    let mut text = format!("{TAG}{run:x}:{:x}:{:x}:{:x}:", stamp.seq, stamp.sched_us, stamp.sent_us);
    let pad = size.saturating_sub(text.len());
    text.extend(std::iter::repeat_n('x', pad));
    text
}

/// The stamp of a content written by run `run`, or None for anything else.
pub(crate) fn parse(text: &str, run: u32) -> Option<Stamp> {
    let rest = text.strip_prefix(TAG)?;
    let mut parts = rest.splitn(5, ':');
    let hex = |part: Option<&str>| part.and_then(|p| u64::from_str_radix(p, 16).ok());
    if hex(parts.next())? != u64::from(run) {
        return None;
    }
    Some(Stamp { seq: hex(parts.next())?, sched_us: hex(parts.next())?, sent_us: hex(parts.next())? })
}

/// The `ref` of a `send` frame: the same stamp, so the `accepted` answer needs no lookup.
pub(crate) fn reference(stamp: Stamp) -> String {
    format!("{:x}.{:x}.{:x}", stamp.seq, stamp.sched_us, stamp.sent_us)
}

pub(crate) fn parse_reference(text: &str) -> Option<Stamp> {
    let mut parts = text.split('.');
    let hex = |part: Option<&str>| part.and_then(|p| u64::from_str_radix(p, 16).ok());
    Some(Stamp { seq: hex(parts.next())?, sched_us: hex(parts.next())?, sent_us: hex(parts.next())? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_through_content_and_ref() {
        let stamp = Stamp { seq: 42, sched_us: 1_000_001, sent_us: 1_000_050 };
        let text = content(7, stamp, 64);
        assert_eq!(text.len(), 64);
        assert_eq!(parse(&text, 7), Some(stamp));
        assert_eq!(parse(&text, 8), None, "another run's message is foreign");
        assert_eq!(parse("hello", 7), None);
        assert_eq!(parse_reference(&reference(stamp)), Some(stamp));
    }
}
