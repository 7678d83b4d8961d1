//! git's pkt-line framing: a 4-digit hex length (counting itself) and data,
//! or one of the special packets `0000` (flush), `0001` (delim) and `0002`
//! (response end). Strict: anything else is an error that says what was
//! wrong, never a panic and never a guess.

use std::io::{self, Read, Write};

/// The most data one packet carries (65520 minus the 4-byte header).
pub const MAX_DATA: usize = 65516;
const MAX_PACKET: usize = MAX_DATA + 4;

#[derive(Debug, thiserror::Error)]
pub enum PktLineError {
    #[error("cannot read from git")]
    Read(#[source] io::Error),
    #[error("cannot write to git")]
    Write(#[source] io::Error),
    #[error("git's input ended in the middle of a packet ({0})")]
    UnexpectedEof(&'static str),
    #[error("malformed pkt-line length {0:?}: expected 4 hex digits")]
    BadLength(String),
    #[error("pkt-line length {0} is invalid (0003 is reserved)")]
    Reserved(usize),
    #[error("pkt-line length {0} is over the maximum of {MAX_PACKET}")]
    TooLong(usize),
    #[error("unexpected {got} in the filter protocol: expected {expected}")]
    Unexpected { expected: &'static str, got: String },
}

/// One packet as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Data(&'a [u8]),
    Flush,
    Delim,
    ResponseEnd,
}

impl Packet<'_> {
    fn describe(&self) -> String {
        match self {
            Packet::Data(d) => format!("a data packet of {} bytes", d.len()),
            Packet::Flush => "a flush packet".to_owned(),
            Packet::Delim => "a delim packet".to_owned(),
            Packet::ResponseEnd => "a response-end packet".to_owned(),
        }
    }
}

fn parse_len(header: &[u8; 4]) -> Result<usize, PktLineError> {
    let mut len = 0usize;
    for &b in header {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => {
                return Err(PktLineError::BadLength(
                    String::from_utf8_lossy(header).into_owned(),
                ));
            }
        };
        len = len * 16 + usize::from(digit);
    }
    Ok(len)
}

/// Reads packets from git. Keeps one packet's worth of buffer; a caller that
/// wants larger reads takes the data straight out of `read_packet`.
pub struct PktReader<R> {
    inner: R,
    buf: Box<[u8]>,
}

impl<R: Read> PktReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: vec![0u8; MAX_DATA].into_boxed_slice(),
        }
    }

    /// Fill `buf` completely; `Ok(false)` if the input ended before the first byte.
    fn fill(
        inner: &mut R,
        buf: &mut [u8],
        what: &'static str,
        eof_ok: bool,
    ) -> Result<bool, PktLineError> {
        let mut filled = 0;
        while filled < buf.len() {
            match inner.read(&mut buf[filled..]) {
                Ok(0) if filled == 0 && eof_ok => return Ok(false),
                Ok(0) => return Err(PktLineError::UnexpectedEof(what)),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(PktLineError::Read(e)),
            }
        }
        Ok(true)
    }

    /// The next packet; `None` when the input ends cleanly between packets.
    pub fn read_packet(&mut self) -> Result<Option<Packet<'_>>, PktLineError> {
        let mut header = [0u8; 4];
        if !Self::fill(&mut self.inner, &mut header, "in a length header", true)? {
            return Ok(None);
        }
        let len = parse_len(&header)?;
        match len {
            0 => return Ok(Some(Packet::Flush)),
            1 => return Ok(Some(Packet::Delim)),
            2 => return Ok(Some(Packet::ResponseEnd)),
            3 => return Err(PktLineError::Reserved(len)),
            n if n > MAX_PACKET => return Err(PktLineError::TooLong(n)),
            _ => {}
        }
        let data = &mut self.buf[..len - 4];
        Self::fill(&mut self.inner, data, "in a packet's data", false)?;
        Ok(Some(Packet::Data(data)))
    }

    /// The next packet's header: `Ok(Err(packet))` for a special packet,
    /// `Ok(Ok(len))` for data of `len` bytes, which the caller then reads.
    fn read_header(
        &mut self,
        expected: &'static str,
    ) -> Result<Result<usize, Packet<'static>>, PktLineError> {
        let mut header = [0u8; 4];
        if !Self::fill(&mut self.inner, &mut header, "in a length header", true)? {
            return Err(PktLineError::UnexpectedEof(expected));
        }
        match parse_len(&header)? {
            0 => Ok(Err(Packet::Flush)),
            1 => Ok(Err(Packet::Delim)),
            2 => Ok(Err(Packet::ResponseEnd)),
            3 => Err(PktLineError::Reserved(3)),
            n if n > MAX_PACKET => Err(PktLineError::TooLong(n)),
            n => Ok(Ok(n - 4)),
        }
    }

    /// A packet that must be there (the input may not end here).
    fn expect_packet(&mut self, expected: &'static str) -> Result<Packet<'_>, PktLineError> {
        match self.read_packet()? {
            Some(p) => Ok(p),
            None => Err(PktLineError::UnexpectedEof(expected)),
        }
    }

    /// Text lines up to a flush packet, each without its trailing newline.
    /// `None` when the input ends cleanly before the list starts.
    pub fn read_list(&mut self) -> Result<Option<Vec<Vec<u8>>>, PktLineError> {
        let mut lines = Vec::new();
        let first = match self.read_packet()? {
            None => return Ok(None),
            Some(p) => text(p, "a text line or a flush packet")?,
        };
        let Some(line) = first else {
            return Ok(Some(lines));
        };
        lines.push(line);
        loop {
            let p = self.expect_packet("a text line or a flush packet")?;
            match text(p, "a text line or a flush packet")? {
                Some(line) => lines.push(line),
                None => return Ok(Some(lines)),
            }
        }
    }

    /// The content that follows a command: data packets up to a flush.
    pub fn content(&mut self) -> ContentReader<'_, R> {
        ContentReader {
            reader: self,
            pos: 0,
            len: 0,
            done: false,
            error: None,
        }
    }
}

/// A packet as a text line: `Some(line)` for data, `None` for flush. Lines
/// stay bytes: they carry paths, which need not be UTF-8.
fn text(p: Packet<'_>, expected: &'static str) -> Result<Option<Vec<u8>>, PktLineError> {
    match p {
        Packet::Flush => Ok(None),
        Packet::Data(d) => Ok(Some(d.strip_suffix(b"\n").unwrap_or(d).to_vec())),
        other => Err(PktLineError::Unexpected {
            expected,
            got: other.describe(),
        }),
    }
}

/// `Read` over the data packets of one content section. A protocol error is
/// kept (`take_error`) as well as returned as an `io::Error`, so that callers
/// can tell git's stream breaking from their own failures.
pub struct ContentReader<'a, R> {
    reader: &'a mut PktReader<R>,
    pos: usize,
    len: usize,
    done: bool,
    error: Option<PktLineError>,
}

impl<R: Read> ContentReader<'_, R> {
    /// The next data packet's length; `None` at the closing flush.
    fn next_len(&mut self) -> Result<Option<usize>, PktLineError> {
        loop {
            match self.reader.read_header("content or a flush packet")? {
                Err(Packet::Flush) => return Ok(None),
                // An empty packet carries nothing; git never sends one, but it is well formed.
                Ok(0) => continue,
                Ok(len) => return Ok(Some(len)),
                Err(other) => {
                    return Err(PktLineError::Unexpected {
                        expected: "content or a flush packet",
                        got: other.describe(),
                    });
                }
            }
        }
    }

    /// Load the next packet into the buffer; `false` at the closing flush.
    fn next_packet(&mut self) -> Result<bool, PktLineError> {
        let Some(len) = self.next_len()? else {
            return Ok(false);
        };
        let data = &mut self.reader.buf[..len];
        PktReader::fill(&mut self.reader.inner, data, "in a packet's data", false)?;
        self.len = len;
        self.pos = 0;
        Ok(true)
    }

    /// Read whole packets straight into `out` while they fit: content then
    /// crosses memory once, not twice. Returns bytes read; 0 at the end or
    /// when the next packet does not fit (then it goes through the buffer).
    fn read_direct(&mut self, out: &mut [u8]) -> Result<usize, PktLineError> {
        let mut filled = 0;
        while out.len() - filled >= MAX_DATA {
            let Some(len) = self.next_len()? else {
                self.done = true;
                break;
            };
            let dest = &mut out[filled..filled + len];
            PktReader::fill(&mut self.reader.inner, dest, "in a packet's data", false)?;
            filled += len;
        }
        Ok(filled)
    }

    /// Read and drop whatever is left of the content, up to its flush packet.
    pub fn drain(&mut self) -> Result<(), PktLineError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        while !self.done {
            if !self.next_packet()? {
                self.done = true;
            }
        }
        Ok(())
    }

    /// The protocol error a read ran into, if any: git's stream is then unusable.
    pub fn take_error(&mut self) -> Option<PktLineError> {
        self.error.take()
    }

    pub fn is_done(&self) -> bool {
        self.done
    }
}

impl<R: Read> Read for ContentReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.error.is_some() {
            return Err(io::Error::other("the filter protocol stream broke earlier"));
        }
        if self.pos == self.len && !self.done && out.len() >= MAX_DATA {
            return match self.read_direct(out) {
                Ok(n) => Ok(n),
                Err(e) => {
                    let message = e.to_string();
                    self.error = Some(e);
                    Err(io::Error::other(message))
                }
            };
        }
        while self.pos == self.len {
            if self.done || out.is_empty() {
                return Ok(0);
            }
            match self.next_packet() {
                Ok(true) => {}
                Ok(false) => {
                    self.done = true;
                    return Ok(0);
                }
                Err(e) => {
                    let message = e.to_string();
                    self.error = Some(e);
                    return Err(io::Error::other(message));
                }
            }
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.reader.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Writes packets to git through one buffer, so that a response of many
/// small packets is one system call and large content goes out in large writes.
pub struct PktWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

/// Output is gathered up to this size before it is written.
const WRITE_BUFFER: usize = 256 * 1024;

impl<W: Write> PktWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(WRITE_BUFFER + MAX_PACKET),
        }
    }

    fn push_header(&mut self, len: usize) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.buf.extend([
            HEX[(len >> 12) & 0xf],
            HEX[(len >> 8) & 0xf],
            HEX[(len >> 4) & 0xf],
            HEX[len & 0xf],
        ]);
    }

    fn maybe_send(&mut self) -> Result<(), PktLineError> {
        if self.buf.len() >= WRITE_BUFFER {
            self.send()?;
        }
        Ok(())
    }

    /// Write out everything buffered (without a flush packet).
    pub fn send(&mut self) -> Result<(), PktLineError> {
        self.inner
            .write_all(&self.buf)
            .and_then(|()| self.inner.flush())
            .map_err(PktLineError::Write)?;
        self.buf.clear();
        Ok(())
    }

    /// `data` as one or more data packets (none for empty data).
    pub fn data(&mut self, mut data: &[u8]) -> Result<(), PktLineError> {
        while !data.is_empty() {
            let n = data.len().min(MAX_DATA);
            self.push_header(n + 4);
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.maybe_send()?;
        }
        Ok(())
    }

    /// One text line (a newline is added).
    pub fn line(&mut self, line: impl AsRef<[u8]>) -> Result<(), PktLineError> {
        let line = line.as_ref();
        let len = line.len() + 1;
        if len > MAX_DATA {
            return Err(PktLineError::TooLong(len + 4));
        }
        self.push_header(len + 4);
        self.buf.extend_from_slice(line);
        self.buf.push(b'\n');
        self.maybe_send()
    }

    /// A flush packet, and everything buffered goes out: git waits for it.
    pub fn flush_pkt(&mut self) -> Result<(), PktLineError> {
        self.flush_pkt_buffered();
        self.send()
    }

    /// A flush packet that more output will follow before git needs to see it.
    pub fn flush_pkt_buffered(&mut self) {
        self.buf.extend_from_slice(b"0000");
    }

    /// Lines then a flush packet.
    pub fn list(&mut self, lines: &[&str]) -> Result<(), PktLineError> {
        for l in lines {
            self.line(l)?;
        }
        self.flush_pkt()
    }
}

/// `Write` that frames everything written as content packets, filling each
/// packet to the maximum before it starts the next.
pub struct ContentWriter<'a, W: Write> {
    writer: &'a mut PktWriter<W>,
    pending: Vec<u8>,
    /// A status line to send, with its flush, before the first byte of content.
    header: Option<&'static str>,
}

impl<'a, W: Write> ContentWriter<'a, W> {
    pub fn new(writer: &'a mut PktWriter<W>) -> Self {
        Self {
            writer,
            pending: Vec::new(),
            header: None,
        }
    }

    /// Content preceded by `status` (and its flush) once the first byte is
    /// written: until then, the caller may still answer something else.
    pub fn after_status(writer: &'a mut PktWriter<W>, status: &'static str) -> Self {
        Self {
            header: Some(status),
            ..Self::new(writer)
        }
    }

    /// Whether anything (the status, content) has been written.
    pub fn started(&self) -> bool {
        self.header.is_none()
    }

    fn start(&mut self) -> Result<(), PktLineError> {
        if let Some(status) = self.header.take() {
            self.writer.line(status)?;
            self.writer.flush_pkt_buffered();
            self.pending.reserve(MAX_DATA);
        }
        Ok(())
    }

    /// Write out the last, partly filled packet; returns the writer for the
    /// caller to end the content with a flush.
    pub fn finish(self) -> Result<&'a mut PktWriter<W>, PktLineError> {
        self.writer.data(&self.pending)?;
        Ok(self.writer)
    }
}

impl<W: Write> Write for ContentWriter<'_, W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let total = buf.len();
        if total == 0 {
            return Ok(0);
        }
        let to_io = |e: PktLineError| io::Error::other(e.to_string());
        self.start().map_err(to_io)?;
        if !self.pending.is_empty() {
            let n = buf.len().min(MAX_DATA - self.pending.len());
            self.pending.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
            if self.pending.len() == MAX_DATA {
                self.writer.data(&self.pending).map_err(to_io)?;
                self.pending.clear();
            }
        }
        // Whole packets go straight from the caller's buffer.
        let whole = buf.len() - buf.len() % MAX_DATA;
        self.writer.data(&buf[..whole]).map_err(to_io)?;
        self.pending.extend_from_slice(&buf[whole..]);
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn framed(chunks: &[&[u8]]) -> Vec<u8> {
        let mut w = PktWriter::new(Vec::new());
        for c in chunks {
            w.data(c).unwrap();
        }
        w.flush_pkt().unwrap();
        w.inner
    }

    fn read_content(bytes: &[u8]) -> Result<Vec<u8>, String> {
        let mut r = PktReader::new(bytes);
        let mut out = Vec::new();
        let mut c = r.content();
        match c.read_to_end(&mut out) {
            Ok(_) => Ok(out),
            Err(_) => Err(c.take_error().unwrap().to_string()),
        }
    }

    #[test]
    fn text_lists_round_trip() {
        let mut w = PktWriter::new(Vec::new());
        w.list(&["git-filter-server", "version=2"]).unwrap();
        assert_eq!(w.inner, b"0016git-filter-server\n000eversion=2\n0000");
        let mut r = PktReader::new(&w.inner[..]);
        assert_eq!(
            r.read_list().unwrap().unwrap(),
            vec![b"git-filter-server".to_vec(), b"version=2".to_vec()]
        );
        assert_eq!(r.read_list().unwrap(), None);
    }

    #[test]
    fn content_of_exactly_one_full_packet_and_of_nothing() {
        let full = vec![7u8; MAX_DATA];
        let bytes = framed(&[&full]);
        assert_eq!(&bytes[..4], b"fff0");
        assert_eq!(bytes.len(), MAX_DATA + 8);
        assert_eq!(read_content(&bytes).unwrap(), full);
        assert_eq!(framed(&[]), b"0000");
        assert_eq!(read_content(b"0000").unwrap(), b"");
        // One byte more than a packet holds makes two packets.
        let over = vec![1u8; MAX_DATA + 1];
        let bytes = framed(&[&over]);
        assert_eq!(&bytes[MAX_DATA + 4..MAX_DATA + 8], b"0005");
        assert_eq!(read_content(&bytes).unwrap(), over);
    }

    #[test]
    fn malformed_and_truncated_input_is_a_clear_error() {
        for (input, expected) in [
            (&b"00zz"[..], "malformed pkt-line length \"00zz\""),
            (b"0003", "0003 is reserved"),
            (b"fff1", "over the maximum"),
            (b"0009ab", "ended in the middle of a packet"),
            (b"00", "ended in the middle of a packet"),
            (b"0006ab", "ended in the middle of a packet"),
            (b"0001", "unexpected a delim packet"),
        ] {
            let err = read_content(input).unwrap_err();
            assert!(err.contains(expected), "{input:?}: {err}");
        }
        // A list cut short, and a list holding a delim.
        let mut r = PktReader::new(&b"000acommand"[..]);
        assert!(r.read_list().is_err());
        let mut r = PktReader::new(&b"0008abc\n0001"[..]);
        assert!(r.read_list().unwrap_err().to_string().contains("delim"));
    }

    #[test]
    fn drain_skips_to_the_flush_and_leaves_the_next_packet() {
        let mut bytes = framed(&[b"abc", &[9u8; 100_000]]);
        bytes.extend_from_slice(b"0009next\n0000");
        let mut r = PktReader::new(&bytes[..]);
        let mut c = r.content();
        let mut two = [0u8; 2];
        c.read_exact(&mut two).unwrap();
        c.drain().unwrap();
        assert!(c.is_done());
        assert_eq!(r.read_list().unwrap().unwrap(), vec![b"next".to_vec()]);
    }

    #[test]
    fn content_writer_fills_packets_whatever_the_write_sizes() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = PktWriter::new(Vec::new());
        let mut cw = ContentWriter::new(&mut w);
        for chunk in data.chunks(1000).chain(std::iter::once(&[][..])) {
            cw.write_all(chunk).unwrap();
        }
        cw.finish().unwrap().flush_pkt().unwrap();
        // Every packet but the last is full.
        let bytes = w.inner;
        let mut r = PktReader::new(&bytes[..]);
        let mut sizes = Vec::new();
        while let Some(Packet::Data(d)) = r.read_packet().unwrap() {
            sizes.push(d.len());
        }
        assert_eq!(
            sizes,
            vec![MAX_DATA, MAX_DATA, MAX_DATA, 200_000 - 3 * MAX_DATA]
        );
        assert_eq!(read_content(&bytes).unwrap(), data);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever git (or anything else) sends, the parser answers with
        /// packets or an error: it never panics, never reads past what it was
        /// given, and never returns a data packet over the maximum.
        #[test]
        fn parser_never_panics_on_arbitrary_input(input in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut r = PktReader::new(&input[..]);
            for _ in 0..input.len() + 1 {
                match r.read_packet() {
                    Ok(Some(Packet::Data(d))) => prop_assert!(d.len() <= MAX_DATA),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            let _ = read_content(&input);
        }

        /// Mutating one byte of valid framing either still parses or fails
        /// with an error; valid framing always round-trips.
        #[test]
        fn framing_round_trips_and_mutations_are_caught(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..6),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let refs: Vec<&[u8]> = chunks.iter().map(|c| &c[..]).collect();
            let bytes = framed(&refs);
            prop_assert_eq!(read_content(&bytes).unwrap(), chunks.concat());
            let mut mutated = bytes.clone();
            let i = at.index(mutated.len());
            mutated[i] = byte;
            let _ = read_content(&mutated);
            // Any truncation is an error, never a short success.
            if bytes.len() > 4 {
                let cut = at.index(bytes.len() - 1);
                prop_assert!(read_content(&bytes[..cut]).is_err());
            }
        }
    }
}
