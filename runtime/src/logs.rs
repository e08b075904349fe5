//! Activation logs: splitting the child's output at the end-of-activation markers, formatting each
//! line as `"<ISO-8601 time> <stream>: <text>"`, merging the two streams in time order and capping
//! the result to what fits in the `x-whisk-logs` response header.
//!
//! Everything here is pure; the readers that feed it live in [`crate::process`].

use base64::Engine as _;
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;

/// The line every launcher writes on stdout and on stderr after each activation (and after loading).
pub const END_MARKER: &str = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX";
/// Newer OpenWhisk runtimes also open each activation with this marker; it is never a log line.
pub const START_MARKER: &str = "XXX_THE_START_OF_A_WHISK_ACTIVATION_XXX";

/// `2026-11-29T17:00:00.123Z`: OpenWhisk's log timestamp (UTC, milliseconds).
const TIMESTAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// One of the child's two output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A line of the action's output, stamped when the proxy read it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub at: OffsetDateTime,
    pub stream: Stream,
    pub text: String,
}

impl LogLine {
    pub fn new(at: OffsetDateTime, stream: Stream, text: impl Into<String>) -> Self {
        Self { at, stream, text: text.into() }
    }

    /// `"<time> <stream>: <text>"`, the shape of an activation record's `logs` entries.
    pub fn render(&self) -> String {
        format!("{} {}: {}", timestamp(self.at), self.stream.as_str(), self.text)
    }
}

/// Formats a time as OpenWhisk does in logs. The time is converted to UTC first.
pub fn timestamp(at: OffsetDateTime) -> String {
    let utc = at.to_offset(time::UtcOffset::UTC);
    // The format only has numeric fields, so it cannot fail for a valid date; fall back to RFC 3339
    // rather than panic if the `time` crate ever disagrees.
    utc.format(TIMESTAMP).unwrap_or_else(|_| utc.to_string())
}

/// What a raw line read from the child holds once the markers are recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split<'a> {
    /// Text to keep as a log line (none for a bare marker).
    pub text: Option<&'a str>,
    /// Whether the line ends this activation's part of the stream.
    pub ends: bool,
}

/// Recognises the end marker at the end of a line: an action that printed without a trailing
/// newline leaves its text in front of the launcher's marker, and that text is still a log line.
pub fn split_marker(raw: &str) -> Split<'_> {
    let line = raw.strip_suffix('\r').unwrap_or(raw);
    if let Some(before) = line.strip_suffix(END_MARKER) {
        return Split { text: (!before.is_empty()).then_some(before), ends: true };
    }
    if line.starts_with(START_MARKER) {
        return Split { text: None, ends: false };
    }
    Split { text: Some(line), ends: false }
}

/// Collects one activation's lines from both streams until each has shown its end marker (or closed).
#[derive(Debug, Clone)]
pub struct Collector {
    stdout: Vec<LogLine>,
    stderr: Vec<LogLine>,
    stdout_done: bool,
    stderr_done: bool,
}

impl Collector {
    /// A stream that is already closed counts as done: no marker will ever come from it.
    pub fn new(stdout_open: bool, stderr_open: bool) -> Self {
        Self { stdout: Vec::new(), stderr: Vec::new(), stdout_done: !stdout_open, stderr_done: !stderr_open }
    }

    /// Accepts a raw line read from `stream` at `at`.
    pub fn line(&mut self, stream: Stream, at: OffsetDateTime, raw: &str) {
        let split = split_marker(raw);
        if let Some(text) = split.text {
            self.lines_mut(stream).push(LogLine::new(at, stream, text));
        }
        if split.ends {
            self.set_done(stream);
        }
    }

    /// Records that `stream` closed.
    pub fn eof(&mut self, stream: Stream) {
        self.set_done(stream);
    }

    /// Both streams have ended this activation.
    pub fn complete(&self) -> bool {
        self.stdout_done && self.stderr_done
    }

    /// Whether `stream` has ended this activation.
    pub fn done(&self, stream: Stream) -> bool {
        match stream {
            Stream::Stdout => self.stdout_done,
            Stream::Stderr => self.stderr_done,
        }
    }

    /// The collected lines of both streams, merged in time order.
    pub fn into_lines(self) -> Vec<LogLine> {
        merge(self.stdout, self.stderr)
    }

    fn lines_mut(&mut self, stream: Stream) -> &mut Vec<LogLine> {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }

    fn set_done(&mut self, stream: Stream) {
        match stream {
            Stream::Stdout => self.stdout_done = true,
            Stream::Stderr => self.stderr_done = true,
        }
    }
}

/// Merges two streams' lines by time. Each input keeps its own order even if the wall clock stepped
/// back, because within one stream the read order is the truth.
pub fn merge(a: Vec<LogLine>, b: Vec<LogLine>) -> Vec<LogLine> {
    let mut merged = Vec::with_capacity(a.len() + b.len());
    let mut a = a.into_iter().peekable();
    let mut b = b.into_iter().peekable();
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.at <= y.at,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_a { a.next() } else { b.next() };
        merged.extend(next);
    }
    merged
}

/// The line appended when the logs did not fit in `limit` bytes.
pub fn truncation_notice(at: OffsetDateTime, limit: usize) -> String {
    LogLine::new(
        at,
        Stream::Stderr,
        format!("Logs were truncated because the total bytes size exceeds the limit of {limit} bytes."),
    )
    .render()
}

/// Keeps the first lines whose JSON array fits in `limit` bytes; if any had to go, `notice` is
/// appended (and room is made for it) so that the reader knows the logs are incomplete.
pub fn cap(lines: Vec<String>, limit: usize, notice: impl FnOnce() -> String) -> Vec<String> {
    if json_array_len(&lines) <= limit {
        return lines;
    }
    let notice = notice();
    // "[" + notice + "]", then each kept line adds itself and a comma.
    let mut size = 2 + json_string_len(&notice);
    let mut kept = Vec::new();
    for line in lines {
        let add = json_string_len(&line) + 1;
        if size + add > limit {
            break;
        }
        size += add;
        kept.push(line);
    }
    kept.push(notice);
    kept
}

/// The `x-whisk-logs` header value: standard base64 of the JSON array of lines.
pub fn header_value(lines: &[String]) -> String {
    let json = serde_json::to_vec(lines).unwrap_or_else(|_| b"[]".to_vec());
    base64::engine::general_purpose::STANDARD.encode(json)
}

fn json_string_len(s: &str) -> usize {
    serde_json::to_string(s).map(|j| j.len()).unwrap_or(s.len() + 2)
}

fn json_array_len(lines: &[String]) -> usize {
    2 + lines.iter().map(|l| json_string_len(l)).sum::<usize>() + lines.len().saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn at(ms: i64) -> OffsetDateTime {
        datetime!(2026-11-29 17:00:00 UTC) + time::Duration::milliseconds(ms)
    }

    #[test]
    fn renders_openwhisk_line_format() {
        let line = LogLine::new(at(123), Stream::Stdout, "héllo ✓");
        assert_eq!(line.render(), "2026-11-29T17:00:00.123Z stdout: héllo ✓");
        let offset = datetime!(2026-11-29 18:00:00.5 +01:00);
        assert_eq!(timestamp(offset), "2026-11-29T17:00:00.500Z");
    }

    #[test]
    fn split_marker_recognises_bare_and_glued_markers() {
        assert_eq!(split_marker(END_MARKER), Split { text: None, ends: true });
        assert_eq!(split_marker(&format!("{END_MARKER}\r")), Split { text: None, ends: true });
        assert_eq!(
            split_marker(&format!("partial{END_MARKER}")),
            Split { text: Some("partial"), ends: true }
        );
        assert_eq!(split_marker("plain"), Split { text: Some("plain"), ends: false });
        assert_eq!(split_marker(&format!("{START_MARKER} with id 42")), Split { text: None, ends: false });
        assert_eq!(split_marker(""), Split { text: Some(""), ends: false });
    }

    #[test]
    fn collector_waits_for_both_markers() {
        let mut c = Collector::new(true, true);
        c.line(Stream::Stdout, at(1), "one");
        c.line(Stream::Stdout, at(3), END_MARKER);
        assert!(!c.complete());
        assert!(c.done(Stream::Stdout));
        c.line(Stream::Stderr, at(2), "two");
        c.eof(Stream::Stderr);
        assert!(c.complete());
        let texts: Vec<_> = c.into_lines().into_iter().map(|l| (l.stream, l.text)).collect();
        assert_eq!(texts, vec![(Stream::Stdout, "one".into()), (Stream::Stderr, "two".into())]);
    }

    #[test]
    fn collector_treats_closed_streams_as_done() {
        assert!(Collector::new(false, false).complete());
        assert!(!Collector::new(true, false).complete());
    }

    #[test]
    fn merge_orders_by_time_and_keeps_each_stream_order() {
        let out = vec![
            LogLine::new(at(1), Stream::Stdout, "o1"),
            LogLine::new(at(5), Stream::Stdout, "o2"),
            // The clock stepped back: still after o2.
            LogLine::new(at(4), Stream::Stdout, "o3"),
        ];
        let err = vec![LogLine::new(at(2), Stream::Stderr, "e1"), LogLine::new(at(6), Stream::Stderr, "e2")];
        let texts: Vec<_> = merge(out, err).into_iter().map(|l| l.text).collect();
        assert_eq!(texts, vec!["o1", "e1", "o2", "o3", "e2"]);
    }

    #[test]
    fn cap_keeps_everything_that_fits() {
        let lines = vec!["a".to_string(), "b".to_string()];
        // ["a","b"] is 9 bytes.
        assert_eq!(cap(lines.clone(), 9, || unreachable!()), lines);
    }

    #[test]
    fn cap_truncates_and_appends_notice_within_limit() {
        let lines: Vec<String> = (0..100).map(|i| format!("line {i:03}")).collect();
        let limit = 100;
        let capped = cap(lines, limit, || "NOTICE".to_string());
        assert_eq!(capped.last().map(String::as_str), Some("NOTICE"));
        assert_eq!(capped[0], "line 000");
        assert!(json_array_len(&capped) <= limit, "{capped:?}");
        // One more line would not have fit.
        let mut more = capped[..capped.len() - 1].to_vec();
        more.push(format!("line {:03}", more.len()));
        more.push("NOTICE".into());
        assert!(json_array_len(&more) > limit);
    }

    #[test]
    fn notice_names_the_limit() {
        assert_eq!(
            truncation_notice(at(0), 32768),
            "2026-11-29T17:00:00.000Z stderr: Logs were truncated because the total bytes size exceeds \
             the limit of 32768 bytes."
        );
    }

    #[test]
    fn header_is_base64_of_json_array() {
        let value = header_value(&["x ✓".to_string()]);
        let decoded = base64::engine::general_purpose::STANDARD.decode(value).unwrap();
        let lines: Vec<String> = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(lines, vec!["x ✓"]);
        assert_eq!(header_value(&[]), "W10=");
    }
}
