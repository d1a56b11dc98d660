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

/// The results of a batch of `n` calls, one per item.
pub(crate) fn batch<F: ProcessFn>(delivery: Delivery, n: usize, executable: &Path) -> Vec<Result<F::Output>> {
    let (pid, frame) = match delivery {
        Delivery::Failed(failure) => return (0..n).map(|_| Err(failure.to_error())).collect(),
        Delivery::Reply { pid, frame } => (pid, frame),
    };
    if frame.kind != Kind::BatchReturn {
        return (0..n)
            .map(|_| Err(reply_error(pid, &frame, executable).unwrap_or_else(|| bad("a single reply to a batch"))))
            .collect();
    }
    let body = match message::split_id(&frame.payload) {
        Some((_, body)) if !body.is_empty() => body,
        _ => return (0..n).map(|_| Err(bad("an empty batch reply"))).collect(),
    };
    let (mode, rest) = (body[0], &body[1..]);
    let mut results = Vec::with_capacity(n);
    let mut reader = ValueReader::new(rest, "result");
    if mode == BATCH_ALL_OK {
        for _ in 0..n {
            results.push(F::read_output(&mut reader));
        }
        if let Err(e) = reader.finish() {
            results.push(Err(e));
            results.truncate(n);
        }
        return results;
    }
    for _ in 0..n {
        results.push(tagged::<F>(&mut reader, pid, executable));
    }
    results
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
