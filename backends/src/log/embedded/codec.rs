//! Bytes on disk: the key → partition hash, the CRC-checked frames of the journal (records
//! of every topic and partition, committed offsets, topic definitions, checkpoint ends),
//! and readers that walk frames in a file or fetch one at a known position.
//!
//! A frame is `len: u32 LE | crc32(body): u32 LE | body` where `len` is the body length.
//! Bodies start with their kind; integers are little-endian:
//! - record `0x11 | topic id: u32 | partition: u32 | offset: u64 | key length: u32 | key | value`;
//! - commit `0x12 | group length: u16 | group | topic id: u32 | partition: u32 | next offset: u64`;
//! - topic `0x13 | topic id: u32 | name length: u16 | name | partitions: u32 | next offset: u64 × partitions`;
//! - checkpoint end `0x14 | started: u64` (milliseconds since the Unix epoch when the
//!   checkpoint was written, that is when the segment before was closed; journals written
//!   before retention of unclaimed records have the bare `0x14`, read as an unknown time).
//!
//! Every length read from disk is checked before use: hostile bytes make a frame invalid,
//! never a panic or a huge allocation beyond [`MAX_BODY`].

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes before a frame's body.
pub(crate) const FRAME_HEADER: usize = 8;
/// The largest body a frame may claim; anything longer is corrupt.
pub(crate) const MAX_BODY: usize = 64 << 20;
/// Bytes of a record body besides its key and value.
pub(crate) const RECORD_OVERHEAD: usize = 1 + 4 + 4 + 8 + 4;
/// Most partitions a topic may have (bounds what is read from disk).
pub(crate) const MAX_PARTITIONS: u32 = 4096;
/// Frame kinds (the first byte of a body).
const RECORD: u8 = 0x11;
const COMMIT: u8 = 0x12;
const TOPIC: u8 = 0x13;
const CHECKPOINT_END: u8 = 0x14;
/// What [`read_frame_at`] reads first.
const FIRST_READ: usize = 4096;
/// How much a [`FrameReader`] reads at a time.
const READ_CHUNK: usize = 256 << 10;

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), so the embedded log
/// maps keys to partitions exactly like Kafka's default partitioner, on every platform
/// and Rust version.
pub(crate) fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition of `key` among `partitions` (Kafka: `toPositive(murmur2(key)) % n`).
pub(crate) fn partition_for(key: &str, partitions: u32) -> u32 {
    debug_assert!(partitions > 0);
    (murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions.max(1)
}

/// Appends one record frame to `out`; returns the frame's length.
pub(crate) fn encode_record(out: &mut Vec<u8>, topic: u32, partition: u32, offset: u64, key: &str, value: &[u8]) -> usize {
    let start = open_frame(out, RECORD_OVERHEAD + key.len() + value.len(), RECORD);
    out.extend_from_slice(&topic.to_le_bytes());
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(value);
    seal(out, start)
}

/// Appends one commit frame to `out`; returns the frame's length. Group names longer than
/// `u16::MAX` bytes are refused by the callers before this.
pub(crate) fn encode_commit(out: &mut Vec<u8>, group: &str, topic: u32, partition: u32, offset: u64) -> usize {
    debug_assert!(group.len() <= usize::from(u16::MAX));
    let start = open_frame(out, 1 + 2 + group.len() + 4 + 4 + 8, COMMIT);
    out.extend_from_slice(&(group.len() as u16).to_le_bytes());
    out.extend_from_slice(group.as_bytes());
    out.extend_from_slice(&topic.to_le_bytes());
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    seal(out, start)
}

/// Appends one topic frame to `out`: the topic's id, name and partition count, with the
/// offset of the next record of each partition (`ends.len()` is the partition count).
pub(crate) fn encode_topic(out: &mut Vec<u8>, id: u32, name: &str, ends: &[u64]) -> usize {
    debug_assert!(name.len() <= usize::from(u16::MAX) && !ends.is_empty() && ends.len() <= MAX_PARTITIONS as usize);
    let start = open_frame(out, 1 + 4 + 2 + name.len() + 4 + 8 * ends.len(), TOPIC);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&(ends.len() as u32).to_le_bytes());
    for end in ends {
        out.extend_from_slice(&end.to_le_bytes());
    }
    seal(out, start)
}

/// Appends the frame that closes a segment's checkpoint to `out`, with the time it is
/// written (`started_ms`, milliseconds since the Unix epoch).
pub(crate) fn encode_checkpoint_end(out: &mut Vec<u8>, started_ms: u64) -> usize {
    let start = open_frame(out, 1 + 8, CHECKPOINT_END);
    out.extend_from_slice(&started_ms.to_le_bytes());
    seal(out, start)
}

/// Starts a frame of `body_len` bytes whose body begins with `kind`; returns its start.
fn open_frame(out: &mut Vec<u8>, body_len: usize, kind: u8) -> usize {
    let start = out.len();
    out.reserve(FRAME_HEADER + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    start
}

/// Writes the CRC of the frame that starts at `start` and returns the frame's length.
fn seal(out: &mut [u8], start: usize) -> usize {
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start + 4..start + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// What the bytes at the front of a buffer hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A whole frame of `len` bytes (header included) whose CRC matches.
    Complete { len: usize },
    /// The buffer must hold at least `needed` bytes to decide.
    Incomplete { needed: usize },
    /// Not a frame: a torn write or corruption.
    Invalid(&'static str),
}

/// Classifies the frame at the start of `buf`.
pub(crate) fn next_frame(buf: &[u8]) -> Frame {
    let Some(header) = buf.get(..FRAME_HEADER) else { return Frame::Incomplete { needed: FRAME_HEADER } };
    let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if body_len == 0 || body_len > MAX_BODY {
        return Frame::Invalid("impossible record length");
    }
    let len = FRAME_HEADER + body_len;
    let Some(body) = buf.get(FRAME_HEADER..len) else { return Frame::Incomplete { needed: len } };
    if crc32fast::hash(body) != crc {
        return Frame::Invalid("checksum mismatch");
    }
    Frame::Complete { len }
}

/// A record body, borrowed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RecordRef<'a> {
    pub(crate) topic: u32,
    pub(crate) partition: u32,
    pub(crate) offset: u64,
    pub(crate) key: &'a str,
    pub(crate) value: &'a [u8],
}

/// A committed position, borrowed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CommitRef<'a> {
    pub(crate) group: &'a str,
    pub(crate) topic: u32,
    pub(crate) partition: u32,
    pub(crate) offset: u64,
}

/// A topic definition.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TopicRef<'a> {
    pub(crate) id: u32,
    pub(crate) name: &'a str,
    /// The next offset of each partition when the frame was written.
    pub(crate) ends: Vec<u64>,
}

/// One decoded frame body of the journal.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Entry<'a> {
    Record(RecordRef<'a>),
    Commit(CommitRef<'a>),
    Topic(TopicRef<'a>),
    /// The end of a segment's checkpoint, with when it was written (milliseconds since the
    /// Unix epoch; `None` in journals written before the time was recorded).
    CheckpointEnd { started_ms: Option<u64> },
}

/// Decodes a frame body whose CRC already matched.
pub(crate) fn decode(body: &[u8]) -> Result<Entry<'_>, &'static str> {
    let mut cursor = Cursor(body);
    let entry = match cursor.u8()? {
        RECORD => {
            let topic = cursor.u32()?;
            let partition = cursor.u32()?;
            let offset = cursor.u64()?;
            let key_len = cursor.u32()? as usize;
            let key = std::str::from_utf8(cursor.take(key_len)?).map_err(|_| "record key is not utf-8")?;
            return Ok(Entry::Record(RecordRef { topic, partition, offset, key, value: cursor.0 }));
        }
        COMMIT => {
            let group_len = usize::from(cursor.u16()?);
            let group = std::str::from_utf8(cursor.take(group_len)?).map_err(|_| "group is not utf-8")?;
            let topic = cursor.u32()?;
            let partition = cursor.u32()?;
            let offset = cursor.u64()?;
            Entry::Commit(CommitRef { group, topic, partition, offset })
        }
        TOPIC => {
            let id = cursor.u32()?;
            let name_len = usize::from(cursor.u16()?);
            let name = std::str::from_utf8(cursor.take(name_len)?).map_err(|_| "topic is not utf-8")?;
            let count = cursor.u32()?;
            if !(1..=MAX_PARTITIONS).contains(&count) {
                return Err("impossible partition count");
            }
            let ends = (0..count).map(|_| cursor.u64()).collect::<Result<Vec<u64>, _>>()?;
            Entry::Topic(TopicRef { id, name, ends })
        }
        CHECKPOINT_END if cursor.0.is_empty() => Entry::CheckpointEnd { started_ms: None },
        CHECKPOINT_END => Entry::CheckpointEnd { started_ms: Some(cursor.u64()?) },
        _ => return Err("unknown frame kind"),
    };
    if !cursor.0.is_empty() {
        return Err("trailing bytes in a frame");
    }
    Ok(entry)
}

/// Reads the frame at `pos` of `file` (which must end by `limit`) and returns its body,
/// or why the bytes there are not a valid frame.
pub(crate) fn read_frame_at(file: &File, pos: u64, limit: u64) -> io::Result<Result<Vec<u8>, &'static str>> {
    let available = limit.saturating_sub(pos);
    // Most records fit in one read; a bigger one takes a second.
    let mut buf = vec![0; (available.min(FIRST_READ as u64)) as usize];
    let filled = read_full_at(file, &mut buf, pos)?;
    buf.truncate(filled);
    loop {
        match next_frame(&buf) {
            Frame::Complete { len } => {
                buf.truncate(len);
                buf.drain(..FRAME_HEADER);
                return Ok(Ok(buf));
            }
            Frame::Invalid(reason) => return Ok(Err(reason)),
            Frame::Incomplete { needed } => {
                if needed as u64 > available {
                    return Ok(Err("incomplete frame"));
                }
                let have = buf.len();
                buf.resize(needed, 0);
                let more = read_full_at(file, &mut buf[have..], pos + have as u64)?;
                if have + more < needed {
                    return Ok(Err("file shorter than expected"));
                }
            }
        }
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("truncated body");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        let b = self.take(8)?;
        let mut bytes = [0; 8];
        bytes.copy_from_slice(b);
        Ok(u64::from_le_bytes(bytes))
    }
}

/// One step of a [`FrameReader`].
#[derive(Debug)]
pub(crate) enum Step<'a> {
    /// A valid frame starting at file position `pos`.
    Frame { pos: u64, body: &'a [u8] },
    /// The limit was reached exactly at a frame boundary.
    End,
    /// The bytes at `pos` are not a valid frame (torn write or corruption).
    Bad { pos: u64, reason: &'static str },
}

/// Walks the frames of a file from a position up to a limit, reading in chunks with
/// positional reads (so it never disturbs other users of the same `File`).
pub(crate) struct FrameReader<'f> {
    file: &'f File,
    limit: u64,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    buf_pos: u64,
    /// Bytes of `buf` already handed out.
    cursor: usize,
}

impl<'f> FrameReader<'f> {
    pub(crate) fn new(file: &'f File, from: u64, limit: u64) -> Self {
        FrameReader { file, limit, buf: Vec::new(), buf_pos: from, cursor: 0 }
    }

    /// The file position of the next frame.
    pub(crate) fn position(&self) -> u64 {
        self.buf_pos + self.cursor as u64
    }

    pub(crate) fn next(&mut self) -> io::Result<Step<'_>> {
        loop {
            let pos = self.position();
            if pos >= self.limit {
                return Ok(Step::End);
            }
            match next_frame(&self.buf[self.cursor..]) {
                Frame::Complete { len } => {
                    let start = self.cursor;
                    self.cursor += len;
                    return Ok(Step::Frame { pos, body: &self.buf[start + FRAME_HEADER..start + len] });
                }
                Frame::Invalid(reason) => return Ok(Step::Bad { pos, reason }),
                Frame::Incomplete { needed } => {
                    let available = self.limit - pos;
                    if needed as u64 > available {
                        return Ok(Step::Bad { pos, reason: "incomplete record at the end" });
                    }
                    // Keep the unread bytes, then read at least the whole frame.
                    self.buf.drain(..self.cursor);
                    self.buf_pos = pos;
                    self.cursor = 0;
                    let want = (needed.max(READ_CHUNK) as u64).min(available) as usize;
                    let have = self.buf.len();
                    self.buf.resize(want, 0);
                    let filled = read_full_at(self.file, &mut self.buf[have..], pos + have as u64)?;
                    self.buf.truncate(have + filled);
                    if have + filled < needed {
                        return Ok(Step::Bad { pos, reason: "file shorter than expected" });
                    }
                }
            }
        }
    }
}

/// Whether the bytes of `file` from `from` up to `to` are all zeros.
pub(crate) fn zeros_from(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let mut buf = vec![0; READ_CHUNK];
    let mut pos = from;
    while pos < to {
        let want = (to - pos).min(READ_CHUNK as u64) as usize;
        let filled = read_full_at(file, &mut buf[..want], pos)?;
        if buf[..filled].iter().any(|byte| *byte != 0) {
            return Ok(false);
        }
        if filled < want {
            break;
        }
        pos += filled as u64;
    }
    Ok(true)
}

/// Reads into `buf` from `pos` until it is full or the file ends; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], pos + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Vectors from Kafka's `UtilsTest.testMurmur2`: the same keys land in the same
    /// partitions as with Kafka's default partitioner (Req 5.6: stable partitioning).
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (data, expected) in cases {
            assert_eq!(murmur2(data) as i32, expected, "{:?}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn partitions_are_in_range_and_stable() {
        for n in 1..20 {
            for key in ["", "a", "conv-1", "ow:biz:+966500000000"] {
                let p = partition_for(key, n);
                assert!(p < n);
                assert_eq!(p, partition_for(key, n));
            }
        }
    }

    #[test]
    fn every_frame_kind_round_trips() {
        let mut buf = Vec::new();
        let len = encode_record(&mut buf, 2, 5, 42, "key", b"value");
        assert_eq!(len, buf.len());
        assert_eq!(next_frame(&buf), Frame::Complete { len });
        let record = decode(&buf[FRAME_HEADER..]).unwrap();
        assert_eq!(record, Entry::Record(RecordRef { topic: 2, partition: 5, offset: 42, key: "key", value: b"value" }));

        let mut buf = Vec::new();
        let len = encode_commit(&mut buf, "router", 1, 3, 7);
        assert_eq!(next_frame(&buf), Frame::Complete { len });
        let commit = decode(&buf[FRAME_HEADER..]).unwrap();
        assert_eq!(commit, Entry::Commit(CommitRef { group: "router", topic: 1, partition: 3, offset: 7 }));

        let mut buf = Vec::new();
        let len = encode_topic(&mut buf, 4, "esh.messages.high", &[3, 0, 9]);
        assert_eq!(next_frame(&buf), Frame::Complete { len });
        let topic = decode(&buf[FRAME_HEADER..]).unwrap();
        assert_eq!(topic, Entry::Topic(TopicRef { id: 4, name: "esh.messages.high", ends: vec![3, 0, 9] }));

        let mut buf = Vec::new();
        let len = encode_checkpoint_end(&mut buf, 1_700_000_000_123);
        assert_eq!(next_frame(&buf), Frame::Complete { len });
        let end = decode(&buf[FRAME_HEADER..]).unwrap();
        assert_eq!(end, Entry::CheckpointEnd { started_ms: Some(1_700_000_000_123) });
    }

    /// Journals written before segments recorded their start time end checkpoints with the
    /// bare kind byte: still read, with the time unknown; anything else is refused.
    #[test]
    fn a_checkpoint_end_without_a_time_is_still_read() {
        assert_eq!(decode(&[CHECKPOINT_END]).unwrap(), Entry::CheckpointEnd { started_ms: None });
        assert!(decode(&[CHECKPOINT_END, 1, 2, 3]).is_err(), "a cut time is refused");
        assert!(decode(&[CHECKPOINT_END, 0, 0, 0, 0, 0, 0, 0, 0, 9]).is_err(), "trailing bytes are refused");
    }

    #[test]
    fn a_frame_is_read_back_at_its_position() {
        let mut bytes = Vec::new();
        let mut positions = Vec::new();
        for i in 0..20u64 {
            positions.push(bytes.len() as u64);
            encode_record(&mut bytes, 0, (i % 3) as u32, i, "k", &vec![1; (i * 700) as usize]);
        }
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        for (i, pos) in positions.iter().enumerate() {
            let body = read_frame_at(&file, *pos, u64::MAX).unwrap().unwrap();
            let Entry::Record(record) = decode(&body).unwrap() else { panic!("not a record") };
            assert_eq!((record.offset, record.value.len()), (i as u64, i * 700));
        }
        let last = *positions.last().unwrap();
        assert!(read_frame_at(&file, last, bytes.len() as u64 - 1).unwrap().is_err(), "a cut frame is refused");
        assert!(read_frame_at(&file, last + 1, u64::MAX).unwrap().is_err(), "a wrong position is refused");
    }

    #[test]
    fn reader_walks_frames_and_stops_at_a_torn_tail() {
        let mut bytes = Vec::new();
        for i in 0..1000u64 {
            encode_record(&mut bytes, 0, 0, i, "key", &vec![7; (i % 50) as usize]);
        }
        let whole = bytes.len() as u64;
        bytes.extend_from_slice(&[3, 0, 0]);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();

        let mut reader = FrameReader::new(&file, 0, bytes.len() as u64);
        let mut expected = 0;
        loop {
            match reader.next().unwrap() {
                Step::Frame { body, .. } => {
                    let Entry::Record(record) = decode(body).unwrap() else { panic!("not a record") };
                    assert_eq!(record.offset, expected);
                    expected += 1;
                }
                Step::Bad { pos, .. } => {
                    assert_eq!(pos, whole);
                    break;
                }
                Step::End => panic!("the torn tail must be reported"),
            }
        }
        assert_eq!(expected, 1000);
        let mut reader = FrameReader::new(&file, 0, whole);
        let mut count = 0;
        while let Step::Frame { .. } = reader.next().unwrap() {
            count += 1;
        }
        assert_eq!(count, 1000);
    }
}
