//! Turning what a worker answered into typed results.

use std::path::Path;

use crate::error::{Error, Result};
use crate::function::ProcessFn;
use crate::pool::task::Delivery;
use crate::pool::worker::reply_error;
use crate::process::{fail_error, read_whole};
use crate::wire::codec::{self, ValueReader};
use crate::wire::frame::Kind;
use crate::wire::message::{self, PanicReport, BATCH_ALL_OK, ITEM_OK, ITEM_PANIC};

/// Runs a decode that calls the user's `Deserialize` impls, turning a panic in one into an error
/// for the task it decodes (it runs in the pool's driver thread, which must not die).
pub(crate) fn guarded<T>(decode: impl FnOnce() -> T, on_panic: impl FnOnce(String) -> T) -> T {
    crate::panic::catch(decode).unwrap_or_else(|report| on_panic(report.message))
}

/// The error for a result whose decoding panicked.
pub(crate) fn decode_panicked(message: String) -> Error {
    Error::Decode {
        what: "result",
        type_name: "the result".into(),
        message: format!("its Deserialize panicked: {message}"),
    }
}

/// The result of a single call.
pub(crate) fn single<F: ProcessFn>(delivery: Delivery, executable: &Path) -> Result<F::Output> {
    match delivery {
        Delivery::Failed(failure) => Err(failure.to_error()),
        Delivery::Reply { pid, frame } => match reply_error(pid, &frame, executable) {
            Some(e) => Err(e),
            None => {
                let (_, body) = message::split_id(&frame.payload).expect("checked by reply_error");
                read_whole::<F>(body)
            }
        },
    }
}

/// The results of one chunk: in the common case every item succeeded, and they are kept as a
/// plain vector (a `Result` per item is ten times the memory for small outputs).
#[derive(Debug)]
pub(crate) enum Chunk<R> {
    AllOk(Vec<R>),
    Mixed(Vec<Result<R>>),
}

impl<R> Chunk<R> {
    pub(crate) fn into_results(self) -> Vec<Result<R>> {
        match self {
            Chunk::AllOk(v) => v.into_iter().map(Ok).collect(),
            Chunk::Mixed(v) => v,
        }
    }
}

/// The results of a batch of `n` calls.
pub(crate) fn batch<F: ProcessFn>(delivery: Delivery, n: usize, executable: &Path) -> Chunk<F::Output> {
    let each = |e: &dyn Fn() -> Error| Chunk::Mixed((0..n).map(|_| Err(e())).collect());
    let (pid, frame) = match delivery {
        Delivery::Failed(failure) => return each(&|| failure.to_error()),
        Delivery::Reply { pid, frame } => (pid, frame),
    };
    if frame.kind != Kind::BatchReturn {
        return each(&|| reply_error(pid, &frame, executable).unwrap_or_else(|| bad("a single reply to a batch")));
    }
    let body = match message::split_id(&frame.payload) {
        Some((_, body)) if !body.is_empty() => body,
        _ => return each(&|| bad("an empty batch reply")),
    };
    let (mode, rest) = (body[0], &body[1..]);
    let mut reader = ValueReader::new(rest, "result");
    if mode == BATCH_ALL_OK {
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            match F::read_output(&mut reader) {
                Ok(v) => values.push(v),
                Err(e) => {
                    let text = e.to_string();
                    let mut results: Vec<Result<F::Output>> = values.into_iter().map(Ok).collect();
                    results.push(Err(e));
                    results.resize_with(n, || Err(bad(&text)));
                    return Chunk::Mixed(results);
                }
            }
        }
        return match reader.finish() {
            Ok(()) => Chunk::AllOk(values),
            Err(e) => {
                let text = e.to_string();
                each(&|| bad(&text))
            }
        };
    }
    Chunk::Mixed((0..n).map(|_| tagged::<F>(&mut reader, pid, executable)).collect())
}

/// Decodes a batch whose items all succeeded straight onto `values` and returns `None`; else
/// leaves `values` as it was and returns one result per item.
pub(crate) fn batch_into<F: ProcessFn>(
    delivery: Delivery,
    n: usize,
    executable: &Path,
    values: &mut Vec<F::Output>,
) -> Option<Vec<Result<F::Output>>> {
    if let Delivery::Reply { frame, .. } = &delivery {
        if let (Kind::BatchReturn, Some((_, body))) = (frame.kind, message::split_id(&frame.payload)) {
            if body.first() == Some(&BATCH_ALL_OK) {
                let before = values.len();
                let mut reader = ValueReader::new(&body[1..], "result");
                let complete = (0..n).all(|_| F::read_output(&mut reader).map(|v| values.push(v)).is_ok());
                if complete && reader.finish().is_ok() {
                    return None;
                }
                values.truncate(before); // the slow path below reports what went wrong
            }
        }
    }
    Some(batch::<F>(delivery, n, executable).into_results())
}

/// How many of a batch's `n` items failed, read from the reply without decoding the results.
pub(crate) fn failed_items(delivery: &Delivery, n: usize) -> usize {
    let Delivery::Reply { frame, .. } = delivery else { return n };
    let Some((_, body)) = message::split_id(&frame.payload) else { return n };
    if frame.kind != Kind::BatchReturn {
        return n;
    }
    match body.split_first() {
        Some((&BATCH_ALL_OK, _)) => 0,
        Some((_, mut rest)) => {
            let mut failed = 0;
            while rest.len() >= 5 {
                let len = u32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
                failed += (rest[0] != ITEM_OK) as usize;
                rest = rest.get(5 + len..).unwrap_or_default();
            }
            failed
        }
        None => n,
    }
}

fn tagged<F: ProcessFn>(reader: &mut ValueReader<'_>, pid: u32, executable: &Path) -> Result<F::Output> {
    let head = reader.take(5)?;
    let (tag, len) = (head[0], u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize);
    let bytes = reader.take(len)?;
    match tag {
        ITEM_OK => read_whole::<F>(bytes),
        ITEM_PANIC => {
            let r: PanicReport = codec::decode("message", bytes)?;
            Err(Error::Panicked { pid, message: r.message, location: r.location, backtrace: r.backtrace })
        }
        _ => Err(fail_error(codec::decode("message", bytes)?, executable)),
    }
}

fn bad(reason: &str) -> Error {
    Error::BadFrame { reason: reason.into() }
}
