//! Bytes on disk: the key → partition hash, the CRC-checked frame every record and
//! committed offset is stored in, and a reader that walks frames in a file.
//!
//! A frame is `len: u32 LE | crc32(body): u32 LE | body` where `len` is the body length.
//! A record body is `version 1: u8 | offset: u64 LE | key length: u32 LE | key | value`;
//! a commit body is `version 1: u8 | group length: u16 LE | group | topic length: u16 LE |
//! topic | partition: u32 LE | next offset: u64 LE`. Every length read from disk is
//! checked before use: hostile bytes make a frame invalid, never a panic or a huge
//! allocation beyond [`MAX_BODY`].

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes before a frame's body.
pub(crate) const FRAME_HEADER: usize = 8;
/// The largest body a frame may claim; anything longer is corrupt.
pub(crate) const MAX_BODY: usize = 64 << 20;
/// Bytes of a record body besides its key and value.
pub(crate) const RECORD_OVERHEAD: usize = 1 + 8 + 4;
const VERSION: u8 = 1;
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
pub(crate) fn encode_record(out: &mut Vec<u8>, offset: u64, key: &str, value: &[u8]) -> usize {
    let start = out.len();
    let body_len = RECORD_OVERHEAD + key.len() + value.len();
    out.reserve(FRAME_HEADER + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(VERSION);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(value);
    seal(out, start)
}

/// Appends one commit frame to `out`; returns the frame's length. Names longer than
/// `u16::MAX` bytes are refused by the callers before this.
pub(crate) fn encode_commit(out: &mut Vec<u8>, group: &str, topic: &str, partition: u32, offset: u64) -> usize {
    debug_assert!(group.len() <= usize::from(u16::MAX) && topic.len() <= usize::from(u16::MAX));
    let start = out.len();
    let body_len = 1 + 2 + group.len() + 2 + topic.len() + 4 + 8;
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(VERSION);
    out.extend_from_slice(&(group.len() as u16).to_le_bytes());
    out.extend_from_slice(group.as_bytes());
    out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    seal(out, start)
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
    pub(crate) offset: u64,
    pub(crate) key: &'a str,
    pub(crate) value: &'a [u8],
}

/// Decodes a record body whose CRC already matched.
pub(crate) fn decode_record(body: &[u8]) -> Result<RecordRef<'_>, &'static str> {
    let mut cursor = Cursor(body);
    if cursor.u8()? != VERSION {
        return Err("unknown record version");
    }
    let offset = cursor.u64()?;
    let key_len = cursor.u32()? as usize;
    let key = std::str::from_utf8(cursor.take(key_len)?).map_err(|_| "record key is not utf-8")?;
    Ok(RecordRef { offset, key, value: cursor.0 })
}

/// A committed position, borrowed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CommitRef<'a> {
    pub(crate) group: &'a str,
    pub(crate) topic: &'a str,
    pub(crate) partition: u32,
    pub(crate) offset: u64,
}

/// Decodes a commit body whose CRC already matched.
pub(crate) fn decode_commit(body: &[u8]) -> Result<CommitRef<'_>, &'static str> {
    let mut cursor = Cursor(body);
    if cursor.u8()? != VERSION {
        return Err("unknown commit version");
    }
    let group_len = usize::from(cursor.u16()?);
    let group = std::str::from_utf8(cursor.take(group_len)?).map_err(|_| "group is not utf-8")?;
    let topic_len = usize::from(cursor.u16()?);
    let topic = std::str::from_utf8(cursor.take(topic_len)?).map_err(|_| "topic is not utf-8")?;
    let partition = cursor.u32()?;
    let offset = cursor.u64()?;
    if !cursor.0.is_empty() {
        return Err("trailing bytes after commit");
    }
    Ok(CommitRef { group, topic, partition, offset })
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
    fn records_and_commits_round_trip() {
        let mut buf = Vec::new();
        let len = encode_record(&mut buf, 42, "key", b"value");
        assert_eq!(len, buf.len());
        assert_eq!(next_frame(&buf), Frame::Complete { len });
        let record = decode_record(&buf[FRAME_HEADER..]).unwrap();
        assert_eq!(record, RecordRef { offset: 42, key: "key", value: b"value" });

        let mut buf = Vec::new();
        let len = encode_commit(&mut buf, "router", "esh.messages.high", 3, 7);
        assert_eq!(next_frame(&buf), Frame::Complete { len });
        let commit = decode_commit(&buf[FRAME_HEADER..]).unwrap();
        assert_eq!(commit, CommitRef { group: "router", topic: "esh.messages.high", partition: 3, offset: 7 });
    }

    #[test]
    fn damaged_frames_are_invalid_not_panics() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 1, "k", b"v");
        for cut in 0..buf.len() {
            assert!(matches!(next_frame(&buf[..cut]), Frame::Incomplete { .. }));
        }
        for i in 0..buf.len() {
            let mut flipped = buf.clone();
            flipped[i] ^= 0x40;
            assert!(!matches!(next_frame(&flipped), Frame::Complete { .. }), "flip at {i} went unnoticed");
        }
        assert_eq!(next_frame(&[0xff; 16]), Frame::Invalid("impossible record length"));
        // Bodies with a valid CRC but hostile contents.
        for body in [&[1u8, 0, 0][..], &[9u8; 13][..], &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff][..]] {
            assert!(decode_record(body).is_err());
            assert!(decode_commit(body).is_err());
        }
    }

    #[test]
    fn reader_walks_frames_and_stops_at_a_torn_tail() {
        let mut bytes = Vec::new();
        for i in 0..1000u64 {
            encode_record(&mut bytes, i, "key", &vec![7; (i % 50) as usize]);
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
                    assert_eq!(decode_record(body).unwrap().offset, expected);
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
