//! Reading Redis' replies: RESP values from the streams commands (RESP2 and RESP3 shapes
//! alike), the start script's reply, and a job's record from its hash.
//!
//! Nothing here trusts the reply's shape: a malformed entry or record is skipped or reported,
//! never a panic.

use redis::Value;

use crate::jobs::{JobId, JobRecord, JobStatus, ResultSource};

/// One stream entry as read from Redis: its fields are `None` when the entry was deleted.
pub(super) struct RawEntry {
    pub entry_id: String,
    fields: Option<Vec<(Value, Value)>>,
}

impl RawEntry {
    fn field(&self, name: &str) -> Option<&Value> {
        self.fields.as_ref()?.iter().find(|(key, _)| bytes_of(key) == Some(name.as_bytes())).map(|(_, value)| value)
    }

    /// The job id, or `None` for an entry that is not a well-formed job.
    pub fn into_job(self) -> (String, Option<JobId>) {
        let id = self.field("id").and_then(bytes_of).and_then(|raw| std::str::from_utf8(raw).ok()?.parse().ok());
        (self.entry_id, id)
    }
}

/// How the start script left one delivered entry (see `START_LUA` in `scripts.rs`).
pub(super) enum Started {
    /// Running now: its attempt, creation time and the fast tier's class (if readable).
    Running { attempt: u32, created_at_ms: u64, fast_class: Option<usize> },
    /// Ended `failed`: out of attempts on workers that died, or its image is gone.
    Failed,
    /// Its record is gone or already finished: the entry was dropped.
    Dropped,
}

/// The start script's reply: three values per entry, in the order the entries were sent.
pub(super) fn parse_started(reply: Vec<Value>) -> Vec<Started> {
    reply
        .chunks_exact(3)
        .map(|outcome| match (int_of(&outcome[0]), int_of(&outcome[1])) {
            (Some(-2), _) => Started::Failed,
            (Some(attempt), created_at_ms) if attempt > 0 => Started::Running {
                attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                created_at_ms: created_at_ms.and_then(|ms| u64::try_from(ms).ok()).unwrap_or(0),
                fast_class: bytes_of(&outcome[2]).and_then(fast_class_of),
            },
            _ => Started::Dropped,
        })
        .collect()
}

/// The one field of the stored fast answer that tier agreement needs.
#[derive(serde::Deserialize)]
struct FastClass {
    class_index: usize,
}

fn fast_class_of(json: &[u8]) -> Option<usize> {
    serde_json::from_slice::<FastClass>(json).ok().map(|fast| fast.class_index)
}

fn int_of(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

pub(super) fn bytes_of(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

pub(super) fn string_of(value: &Value) -> Option<String> {
    bytes_of(value).and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
}

/// `XREADGROUP`'s reply: nil on timeout, else per stream `[key, entries]` (RESP2) or a map
/// from key to entries (RESP3). We read one stream.
pub(super) fn parse_read_reply(reply: Value) -> Vec<RawEntry> {
    match reply {
        Value::Array(streams) => streams
            .into_iter()
            .flat_map(|stream| match stream {
                Value::Array(mut pair) if pair.len() == 2 => parse_entries(pair.swap_remove(1)),
                _ => Vec::new(),
            })
            .collect(),
        Value::Map(streams) => streams.into_iter().flat_map(|(_, entries)| parse_entries(entries)).collect(),
        _ => Vec::new(),
    }
}

/// A list of `[id, [field, value, ...]]`; the fields are nil for an entry deleted meanwhile.
pub(super) fn parse_entries(entries: Value) -> Vec<RawEntry> {
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let mut parts = parts.into_iter();
            let entry_id = string_of(&parts.next()?)?;
            let fields = match parts.next() {
                Some(Value::Array(flat)) => {
                    let mut pairs = Vec::with_capacity(flat.len() / 2);
                    let mut flat = flat.into_iter();
                    while let (Some(key), Some(value)) = (flat.next(), flat.next()) {
                        pairs.push((key, value));
                    }
                    Some(pairs)
                }
                Some(Value::Map(pairs)) => Some(pairs),
                _ => None,
            };
            Some(RawEntry { entry_id, fields })
        })
        .collect()
}

pub(super) fn parse_record(id: JobId, fields: Vec<(String, String)>) -> Result<JobRecord, String> {
    let mut record: Option<JobRecord> = None;
    let mut status = None;
    let mut result = None;
    let mut error = None;
    let mut attempts = 0;
    let mut created_at_ms = 0;
    let mut started_at_ms = None;
    let mut completed_at_ms = None;
    let mut callback_url = None;
    let mut source = ResultSource::Worker;
    let number = |name: &str, text: &str| text.parse::<u64>().map_err(|err| format!("{name}: {err}"));
    for (name, value) in fields {
        match name.as_str() {
            "status" => status = Some(JobStatus::parse(&value).ok_or_else(|| format!("status {value:?}"))?),
            "sync" => {
                let fast = serde_json::from_str(&value).map_err(|err| format!("sync: {err}"))?;
                record = Some(JobRecord::new(id, fast, 0));
            }
            "result" => result = Some(serde_json::from_str(&value).map_err(|err| format!("result: {err}"))?),
            "error" => error = Some(value),
            "attempts" => attempts = u32::try_from(number("attempts", &value)?).unwrap_or(u32::MAX),
            "created_at_ms" => created_at_ms = number("created_at_ms", &value)?,
            "started_at_ms" => started_at_ms = Some(number("started_at_ms", &value)?),
            "completed_at_ms" => completed_at_ms = Some(number("completed_at_ms", &value)?),
            "callback" => callback_url = Some(value),
            "source" => source = ResultSource::parse(&value).ok_or_else(|| format!("source {value:?}"))?,
            _ => {}
        }
    }
    let mut record = record.ok_or("no sync prediction")?;
    record.status = status.ok_or("no status")?;
    record.result = result;
    record.error = error;
    record.attempts = attempts;
    record.created_at_ms = created_at_ms;
    record.started_at_ms = started_at_ms;
    record.completed_at_ms = completed_at_ms;
    record.callback_url = callback_url;
    record.source = source;
    Ok(record)
}
