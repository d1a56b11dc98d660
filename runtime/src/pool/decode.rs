//! Turning what a worker answered into typed results. Nothing here lets a panic out: a user's
//! `Deserialize` that panics is the `Decode` error of the one result it was decoding.

use std::path::Path;

use crate::error::{Error, Result};
use crate::function::ProcessFn;
use crate::panic;
use crate::pool::task::Delivery;
use crate::pool::worker::reply_error;
use crate::process::{fail_error, read_whole};
use crate::wire::codec::{self, deserialize_panicked, ValueReader};
use crate::wire::fds;
use crate::wire::frame::{Frame, Kind};
use crate::wire::items::{ItemsReader, ITEM_OK, ITEM_PANIC};
use crate::wire::message::{self, PanicReport};

/// Decodes one whole result as `F`'s output, a panic in its `Deserialize` included.
fn read_one<F: ProcessFn>(bytes: &[u8]) -> Result<F::Output> {
    panic::catch(|| read_whole::<F>(bytes)).unwrap_or_else(|report| {
        Err(deserialize_panicked("result", std::any::type_name::<F::Output>(), report.message))
    })
}

/// The result of a single call.
pub(crate) fn single<F: ProcessFn>(delivery: Delivery, executable: &Path) -> Result<F::Output> {
    match delivery {
        Delivery::Failed(failure) => Err(failure.to_error()),
        Delivery::Reply { pid, frame } => match reply_error(pid, &frame, executable) {
            Some(e) => Err(e),
            None => {
                let (_, body) = message::split_id(&frame.payload).expect("checked by reply_error");
                fds::provide(frame.fds, || read_one::<F>(body)).0
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

/// The item list of a batch reply, or the error every item of it gets.
fn items_of<'f>(
    pid: u32,
    frame: &'f Frame,
    n: usize,
    executable: &Path,
) -> std::result::Result<ItemsReader<'f>, Error> {
    if frame.kind != Kind::BatchReturn {
        return Err(reply_error(pid, frame, executable).unwrap_or_else(|| bad("a single reply to a batch")));
    }
    let (_, body) = message::split_id(&frame.payload).ok_or_else(|| bad("a batch reply without a task id"))?;
    ItemsReader::new(body, n)
}

/// The results of a batch of `n` calls.
pub(crate) fn batch<F: ProcessFn>(delivery: Delivery, n: usize, executable: &Path) -> Chunk<F::Output> {
    let each = |e: &dyn Fn() -> Error| Chunk::Mixed((0..n).map(|_| Err(e())).collect());
    let (pid, mut frame) = match delivery {
        Delivery::Failed(failure) => return each(&|| failure.to_error()),
        Delivery::Reply { pid, frame } => (pid, frame),
    };
    let received = std::mem::take(&mut frame.fds);
    let mut items = match items_of(pid, &frame, n, executable) {
        Ok(items) => items,
        // the same error for every item, made afresh for each
        Err(_) => return each(&|| items_of(pid, &frame, n, executable).err().unwrap_or_else(|| bad("unreachable"))),
    };
    let (results, _) =
        fds::provide(received, || (0..n).map(|_| item::<F>(&mut items, pid, executable)).collect::<Vec<_>>());
    match results.iter().all(Result::is_ok) {
        true => Chunk::AllOk(results.into_iter().map(|r| r.expect("checked")).collect()),
        false => Chunk::Mixed(results),
    }
}

/// Decodes a batch whose items all succeeded straight onto `values` and returns `None`; else
/// leaves `values` as it was and returns one result per item.
pub(crate) fn batch_into<F: ProcessFn>(
    mut delivery: Delivery,
    n: usize,
    executable: &Path,
    values: &mut Vec<F::Output>,
) -> Option<Vec<Result<F::Output>>> {
    if let Delivery::Reply { pid, frame } = &mut delivery {
        let received = std::mem::take(&mut frame.fds);
        if let Some((_, region)) = items_of(*pid, frame, n, executable).ok().and_then(|items| items.uniform()) {
            // Every item succeeded, back to back: one pass, one panic catch for the chunk. If
            // anything fails, the slow path below finds which item, decoding each alone.
            let before = values.len();
            let (complete, received) = fds::provide(received, || {
                panic::catch(|| {
                    let mut reader = ValueReader::new(region, "result");
                    (0..n).all(|_| F::read_output(&mut reader).map(|v| values.push(v)).is_ok())
                        && reader.finish().is_ok()
                })
            });
            if matches!(complete, Ok(true)) {
                return None;
            }
            values.truncate(before);
            frame.fds = received;
        } else {
            frame.fds = received;
        }
    }
    Some(batch::<F>(delivery, n, executable).into_results())
}

/// How many of a batch's `n` items failed, read from the reply without decoding the results.
pub(crate) fn failed_items(delivery: &Delivery, n: usize) -> usize {
    let Delivery::Reply { frame, .. } = delivery else { return n };
    if frame.kind != Kind::BatchReturn {
        return n;
    }
    match message::split_id(&frame.payload).map(|(_, body)| ItemsReader::new(body, n)) {
        Some(Ok(items)) => items.failures(),
        _ => n,
    }
}

/// The next item's result.
fn item<F: ProcessFn>(items: &mut ItemsReader<'_>, pid: u32, executable: &Path) -> Result<F::Output> {
    let (tag, bytes) = items.next_item()?;
    match tag {
        ITEM_OK => read_one::<F>(bytes),
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
