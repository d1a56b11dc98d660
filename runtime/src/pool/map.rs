//! `map`, `starmap` and `imap`: many calls, sent in chunks (one frame per chunk), their results
//! put back in order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::function::ProcessFn;
use crate::pool::async_result::{AsyncResult, Slot, Tasks};
use crate::pool::decode;
use crate::pool::task::{Delivery, Failure, Sink};
use crate::pool::Pool;
use crate::registry;
use crate::wire::message::{self, BatchFrame};

/// How far a `map` or an `imap` has come.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Items finished, failed ones included.
    pub done: usize,
    /// Items that failed.
    pub failed: usize,
    /// All the items, when known (`None` for an `imap` whose input does not say its length and
    /// has not ended, unless given with [`Imap::total`]).
    pub total: Option<usize>,
}

/// The most argument bytes an automatic chunk holds.
const AUTO_CHUNK_BYTES: usize = 64 * 1024;

/// A map's collector, and the task ids of its chunks (to cancel them).
type Submitted<R> = (Arc<Collect<R>>, Vec<u64>);

/// The results of one `map` as its chunks come back.
struct Collect<R> {
    state: Mutex<CollectState<R>>,
    changed: Condvar,
}

struct CollectState<R> {
    /// Each chunk's reply, in input order, as it arrives; decoded by whoever waits.
    arrived: Vec<Option<Delivery>>,
    /// Each chunk's item count.
    lens: Vec<usize>,
    /// Every chunk has been submitted: `arrived` is complete.
    all_submitted: bool,
    /// Chunks submitted and not yet arrived.
    chunks_left: usize,
    progress: Progress,
    /// For `map_async`: where the whole result goes when the last chunk is in.
    slot: Option<Arc<Slot<Vec<R>>>>,
}

impl<R> Collect<R> {
    fn lock(&self) -> MutexGuard<'_, CollectState<R>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Pool {
    /// Calls `f` on every item, in the workers, and returns the results in order (`Pool.map`).
    /// The first failure is returned as [`Error::Item`] with the index of its item.
    ///
    /// The items are sent in chunks (automatic size: the length divided by four times the
    /// workers, as in Python; see [`PoolBuilder::chunksize`](crate::PoolBuilder::chunksize)).
    pub fn map<F, A>(&self, f: F, items: impl IntoIterator<Item = A>) -> Result<Vec<F::Output>>
    where
        F: ProcessFn<Args = (A,)>,
        F::Output: Send + 'static,
    {
        self.starmap(f, items.into_iter().map(|a| (a,)))
    }

    /// Like [`map`](Pool::map), for functions of several parameters: each item is the tuple of
    /// arguments (`Pool.starmap`).
    pub fn starmap<F: ProcessFn>(&self, f: F, items: impl IntoIterator<Item = F::Args>) -> Result<Vec<F::Output>>
    where
        F::Output: Send + 'static,
    {
        self.starmap_progress(f, items, |_| {})
    }

    /// Like [`map`](Pool::map), with one `Result` per item: a failed item does not hide the
    /// others' results.
    ///
    /// With a [`task_timeout`](crate::PoolBuilder::task_timeout), a call that hangs (native
    /// code stuck, an endless loop) costs its worker, not the map:
    ///
    /// ```
    /// # extern crate multiproc_runtime as multiproc;
    /// use std::time::Duration;
    /// use multiproc::{process_fn, Error, Pool};
    ///
    /// #[process_fn]
    /// fn parse(input: String) -> u64 {
    ///     if input == "hang" {
    ///         loop { std::thread::sleep(Duration::from_secs(1)) }
    ///     }
    ///     input.parse().expect("a number")
    /// }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let pool = Pool::builder().workers(2).task_timeout(Duration::from_millis(500)).build()?;
    /// let inputs = ["1", "hang", "3", "x"].map(String::from);
    /// let results = pool.map_results(parse, inputs);
    /// assert_eq!(results[0].as_ref().ok(), Some(&1));
    /// assert!(matches!(results[1], Err(Error::TaskTimedOut { .. }))); // killed and replaced
    /// assert_eq!(results[2].as_ref().ok(), Some(&3));
    /// assert!(matches!(&results[3], Err(Error::Panicked { message, .. }) if message.contains("a number")));
    /// # Ok(())
    /// # }
    /// ```
    pub fn map_results<F, A>(&self, f: F, items: impl IntoIterator<Item = A>) -> Vec<Result<F::Output>>
    where
        F: ProcessFn<Args = (A,)>,
        F::Output: Send + 'static,
    {
        self.starmap_results(f, items.into_iter().map(|a| (a,)))
    }

    /// Like [`starmap`](Pool::starmap), with one `Result` per item.
    pub fn starmap_results<F: ProcessFn>(
        &self,
        f: F,
        items: impl IntoIterator<Item = F::Args>,
    ) -> Vec<Result<F::Output>>
    where
        F::Output: Send + 'static,
    {
        self.map_progress_results(f, items, |_| {})
    }

    /// Like [`map`](Pool::map), calling `on_progress` in this thread each time a chunk of
    /// results comes back (with the `progress` feature, `progress_bar()`
    /// draws a terminal bar).
    pub fn map_progress<F, A>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        on_progress: impl FnMut(Progress),
    ) -> Result<Vec<F::Output>>
    where
        F: ProcessFn<Args = (A,)>,
        F::Output: Send + 'static,
    {
        self.starmap_progress(f, items.into_iter().map(|a| (a,)), on_progress)
    }

    /// Like [`starmap`](Pool::starmap), calling `on_progress` in this thread each time a chunk
    /// of results comes back.
    pub fn starmap_progress<F: ProcessFn>(
        &self,
        f: F,
        items: impl IntoIterator<Item = F::Args>,
        on_progress: impl FnMut(Progress),
    ) -> Result<Vec<F::Output>>
    where
        F::Output: Send + 'static,
    {
        let collect = match self.submit_map(f, items.into_iter().collect(), None) {
            Ok((c, _)) => c,
            Err((_, e)) => return Err(e),
        };
        gather_values::<F>(&collect, on_progress)
    }

    fn map_progress_results<F: ProcessFn>(
        &self,
        f: F,
        items: impl IntoIterator<Item = F::Args>,
        on_progress: impl FnMut(Progress),
    ) -> Vec<Result<F::Output>>
    where
        F::Output: Send + 'static,
    {
        match self.submit_map(f, items.into_iter().collect(), None) {
            Ok((collect, _)) => gather_results::<F>(&collect, on_progress),
            Err((n, e)) => one_error_each(n, e),
        }
    }

    /// Submits a `map` and returns at once; the handle gives the whole result (`Pool.map_async`).
    pub fn map_async<F, A>(&self, f: F, items: impl IntoIterator<Item = A>) -> AsyncResult<Vec<F::Output>>
    where
        F: ProcessFn<Args = (A,)>,
        F::Output: Send + 'static,
    {
        self.starmap_async(f, items.into_iter().map(|a| (a,)))
    }

    /// Submits a `starmap` and returns at once (`Pool.starmap_async`).
    pub fn starmap_async<F: ProcessFn>(
        &self,
        f: F,
        items: impl IntoIterator<Item = F::Args>,
    ) -> AsyncResult<Vec<F::Output>>
    where
        F::Output: Send + 'static,
    {
        let (result, slot) = AsyncResult::new();
        match self.submit_map(f, items.into_iter().collect(), Some(slot)) {
            Ok((_, ids)) => result.with_tasks(Tasks { pool: Arc::downgrade(&self.inner), ids }),
            Err((_, e)) => AsyncResult::done(Err(e)),
        }
    }

    /// Sends `items` in chunks; the results gather in the returned collector (and go to `slot`
    /// when complete). `Err` carries the item count, for one error per item.
    fn submit_map<F: ProcessFn>(
        &self,
        _f: F,
        items: Vec<F::Args>,
        slot: Option<Arc<Slot<Vec<F::Output>>>>,
    ) -> std::result::Result<Submitted<F::Output>, (usize, Error)>
    where
        F::Output: Send + 'static,
    {
        let n = items.len();
        registry::lookup(F::NAME).map_err(|e| (n, e))?;
        let (max_items, max_bytes) = self.chunk_limits(n);
        let collect = Arc::new(Collect {
            state: Mutex::new(CollectState {
                arrived: Vec::new(),
                lens: Vec::new(),
                all_submitted: false,
                chunks_left: 0,
                progress: Progress { done: 0, failed: 0, total: Some(n) },
                slot,
            }),
            changed: Condvar::new(),
        });
        // Each chunk goes out as soon as it is encoded: the workers start on the first while
        // the next ones are being written.
        let mut ids = Vec::new();
        self.submit_pieces::<F>(&items, max_items, max_bytes, |id, len| {
            ids.push(id);
            let c = {
                let mut st = collect.lock();
                st.arrived.push(None);
                st.lens.push(len);
                st.chunks_left += 1;
                st.arrived.len() - 1
            };
            let collect = Arc::clone(&collect);
            Sink::new(move |delivery| {
                let failed = decode::failed_items(&delivery, len);
                let mut st = collect.lock();
                st.progress.done += len;
                st.progress.failed += failed;
                st.arrived[c] = Some(delivery);
                st.chunks_left -= 1;
                if st.chunks_left == 0 && st.all_submitted {
                    finish_async::<F>(&mut st);
                }
                drop(st);
                collect.changed.notify_all();
            })
        });
        let mut st = collect.lock();
        st.all_submitted = true;
        if st.chunks_left == 0 {
            finish_async::<F>(&mut st);
        }
        drop(st);
        collect.changed.notify_all();
        Ok((collect, ids))
    }

    /// Encodes `items` into chunks of at most `max_items` items and `max_bytes` bytes each,
    /// within the frame limit, and submits them in order; `sink_for(len)` makes the sink of a
    /// chunk of `len` items. An item that cannot be encoded, or does not fit a frame, is a
    /// chunk of its own that fails with its error, unsent: only it fails.
    fn submit_pieces<F: ProcessFn>(
        &self,
        items: &[F::Args],
        max_items: usize,
        max_bytes: usize,
        mut sink_for: impl FnMut(u64, usize) -> Sink,
    ) {
        let inner = &self.inner;
        let max_frame = inner.config.process.frame_limit();
        let mut rest = items;
        while !rest.is_empty() {
            let id = inner.next_id();
            let batch = inner.encoding(|| message::batch_frame::<F>(id, rest, max_items, max_bytes, max_frame));
            let (frame, len) = match batch {
                BatchFrame::Frame(frame, len) => (frame.finish(max_frame).map_err(Failure::unsent), len),
                BatchFrame::BadItem(e) => (Err(Failure::unsent(e)), 1),
            };
            rest = &rest[len..];
            let sink = sink_for(id, len);
            match frame {
                Ok(frame) => {
                    let timeout = inner.config.task_timeout.map(|t| t * len as u32);
                    inner.submit(F::NAME, id, Arc::new(frame), timeout, inner.config.retries, sink)
                }
                Err(failure) => sink.deliver(Delivery::Failed(failure)),
            }
        }
    }

    /// The most items, and encoded bytes, per chunk for a map of `n` items. Automatic: Python's
    /// size (the length over four times the workers), but no chunk over 64 KiB of arguments, so
    /// that the workers start at once and results stream back while the rest is sent (measured:
    /// 1M `u64` squares, 8 chunks of 125,000: 13 ns/item; chunks of 64 KiB: 9 ns/item).
    fn chunk_limits(&self, n: usize) -> (usize, usize) {
        let config = &self.inner.config;
        match (config.chunksize, config.task_timeout) {
            (Some(c), _) => (c, usize::MAX),
            (None, Some(_)) => (1, usize::MAX),
            (None, None) => (n.div_ceil(4 * config.workers).max(1), AUTO_CHUNK_BYTES),
        }
    }

    /// Calls `f` on every item lazily, yielding the results in order (`Pool.imap`). The input
    /// is read only as results are taken, with at most a window of items in flight, so an
    /// endless iterator works and memory stays flat.
    ///
    /// ```
    /// # extern crate multiproc_runtime as multiproc;
    /// use multiproc::{process_fn, Pool};
    ///
    /// #[process_fn]
    /// fn collatz_steps(mut n: u64) -> u64 {
    ///     let mut steps = 0;
    ///     while n != 1 {
    ///         n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
    ///         steps += 1;
    ///     }
    ///     steps
    /// }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let pool = Pool::new(2)?;
    /// // an endless input: the first start whose sequence takes over 100 steps
    /// let (n, steps) = (1..)
    ///     .zip(pool.imap(collatz_steps, 1..).chunksize(16))
    ///     .find(|(_, steps)| matches!(steps, Ok(s) if *s > 100))
    ///     .expect("the input is endless");
    /// assert_eq!((n, steps?), (27, 111));
    /// # Ok(())
    /// # }
    /// ```
    pub fn imap<F, A, I>(&self, f: F, items: I) -> Imap<'_, F, impl Iterator<Item = (A,)>>
    where
        F: ProcessFn<Args = (A,)>,
        F::Output: Send + 'static,
        I: IntoIterator<Item = A>,
    {
        Imap::new(self, f, items.into_iter().map(|a| (a,)), true)
    }

    /// Like [`imap`](Pool::imap), yielding results as they come (`Pool.imap_unordered`).
    pub fn imap_unordered<F, A, I>(&self, f: F, items: I) -> Imap<'_, F, impl Iterator<Item = (A,)>>
    where
        F: ProcessFn<Args = (A,)>,
        F::Output: Send + 'static,
        I: IntoIterator<Item = A>,
    {
        Imap::new(self, f, items.into_iter().map(|a| (a,)), false)
    }

    /// Like [`imap`](Pool::imap), for functions of several parameters.
    pub fn istarmap<F, I>(&self, f: F, items: I) -> Imap<'_, F, I::IntoIter>
    where
        F: ProcessFn,
        F::Output: Send + 'static,
        I: IntoIterator<Item = F::Args>,
    {
        Imap::new(self, f, items.into_iter(), true)
    }
}

/// Waits for chunk `next` (reporting progress meanwhile) and takes its reply; `None` after the
/// last chunk.
fn wait_chunk<R>(
    collect: &Collect<R>,
    next: usize,
    reported: &mut Option<Progress>,
    on_progress: &mut impl FnMut(Progress),
) -> Option<(Delivery, usize)> {
    let mut st = collect.lock();
    loop {
        if *reported != Some(st.progress) {
            let progress = st.progress;
            *reported = Some(progress);
            drop(st);
            on_progress(progress);
            st = collect.lock();
            continue;
        }
        if let Some(d) = st.arrived.get_mut(next).and_then(Option::take) {
            return Some((d, st.lens[next]));
        }
        if st.all_submitted && next >= st.arrived.len() {
            return None;
        }
        st = collect.changed.wait(st).unwrap_or_else(|p| p.into_inner());
    }
}

/// The values of a map, decoded in this thread chunk by chunk as they arrive, in order (the
/// driver goes on reading the next replies meanwhile): all-successful chunks straight onto the
/// output. Stops at the first failure.
fn gather_values<F: ProcessFn>(
    collect: &Collect<F::Output>,
    mut on_progress: impl FnMut(Progress),
) -> Result<Vec<F::Output>>
where
    F::Output: Send + 'static,
{
    let exe = std::path::Path::new("/proc/self/exe");
    let total = collect.lock().progress.total.unwrap_or(0);
    let mut out = Vec::with_capacity(total);
    let mut reported = None;
    let mut next = 0;
    while let Some((delivery, len)) = wait_chunk(collect, next, &mut reported, &mut on_progress) {
        if let Some(results) = decode::batch_into::<F>(delivery, len, exe, &mut out) {
            push_or_first_failure(&mut out, results)?;
        }
        next += 1;
    }
    let last = collect.lock().progress;
    if reported != Some(last) {
        on_progress(last);
    }
    Ok(out)
}

/// One result per item of a map, in order.
fn gather_results<F: ProcessFn>(
    collect: &Collect<F::Output>,
    mut on_progress: impl FnMut(Progress),
) -> Vec<Result<F::Output>>
where
    F::Output: Send + 'static,
{
    let exe = std::path::Path::new("/proc/self/exe");
    let mut out = Vec::new();
    let mut reported = None;
    let mut next = 0;
    while let Some((delivery, len)) = wait_chunk(collect, next, &mut reported, &mut on_progress) {
        out.extend(decode::batch::<F>(delivery, len, exe).into_results());
        next += 1;
    }
    let last = collect.lock().progress;
    if reported != Some(last) {
        on_progress(last);
    }
    out
}

fn push_or_first_failure<R>(out: &mut Vec<R>, results: Vec<Result<R>>) -> Result<()> {
    for r in results {
        let index = out.len();
        out.push(r.map_err(|e| Error::Item { index, error: Box::new(e) })?);
    }
    Ok(())
}

/// The whole result of a `map_async`, once the last chunk is in (in the driver thread).
fn finish_async<F: ProcessFn>(st: &mut CollectState<F::Output>)
where
    F::Output: Send + 'static,
{
    if let Some(slot) = st.slot.take() {
        let exe = std::path::Path::new("/proc/self/exe");
        let arrived: Vec<Delivery> = st.arrived.iter_mut().map(|d| d.take().expect("every chunk delivered")).collect();
        let lens = st.lens.clone();
        let result = (|| {
            let mut out = Vec::with_capacity(lens.iter().sum());
            for (delivery, len) in arrived.into_iter().zip(lens) {
                if let Some(results) = decode::batch_into::<F>(delivery, len, exe, &mut out) {
                    push_or_first_failure(&mut out, results)?;
                }
            }
            Ok(out)
        })();
        slot.fill(result);
    }
}

fn one_error_each<R>(n: usize, e: Error) -> Vec<Result<R>> {
    let text = e.to_string();
    let mut out = vec![Err(e)];
    out.extend((1..n).map(|_| Err(Error::BadFrame { reason: text.clone() })));
    out.truncate(n);
    out
}

/// The lazy results of [`Pool::imap`], [`Pool::imap_unordered`] and [`Pool::istarmap`]: one
/// `Result` per item. A failed item is an [`Error::Item`] holding its index in the input and
/// what went wrong, so an unordered stream still says which input crashed.
pub struct Imap<'p, F: ProcessFn, I> {
    pool: &'p Pool,
    items: I,
    ordered: bool,
    chunksize: usize,
    window: usize,
    shared: Arc<ImapShared<F::Output>>,
    /// Chunks submitted; the next chunk's number.
    submitted: u64,
    /// Items read from the input: the next item's index.
    read: usize,
    /// In order: the chunk whose results come next.
    next_chunk: u64,
    in_flight: usize,
    exhausted: bool,
    progress: Progress,
    /// The number of items, when known before the input ends: from an input of exact size,
    /// or [`total`](Imap::total).
    total: Option<usize>,
    /// Called with the progress after each result.
    on_progress: Option<Box<dyn FnMut(Progress) + 'p>>,
    /// The task ids of the chunks submitted whose results have not all been taken: cancelled
    /// if the `Imap` is dropped first.
    pending: VecDeque<u64>,
    /// An option that cannot work: the first item is this error, and there is no other.
    misconfigured: Option<&'static str>,
}

struct ImapShared<R> {
    state: Mutex<ImapState<R>>,
    arrived: Condvar,
}

struct ImapState<R> {
    chunks: BTreeMap<u64, VecDeque<Result<R>>>,
    unordered: VecDeque<Result<R>>,
    /// Task ids of chunks that arrived and are still in `pending`.
    arrived: std::collections::HashSet<u64>,
}

impl<R> ImapShared<R> {
    fn lock(&self) -> MutexGuard<'_, ImapState<R>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<F: ProcessFn, I> std::fmt::Debug for Imap<'_, F, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap").field("function", &F::NAME).field("progress", &self.progress).finish_non_exhaustive()
    }
}

impl<'p, F, I> Imap<'p, F, I>
where
    F: ProcessFn,
    F::Output: Send + 'static,
    I: Iterator<Item = F::Args>,
{
    fn new(pool: &'p Pool, _f: F, items: I, ordered: bool) -> Self {
        let total = match items.size_hint() {
            (low, Some(high)) if low == high => Some(low),
            _ => None,
        };
        Imap {
            total,
            on_progress: None,
            pending: VecDeque::new(),
            pool,
            items,
            ordered,
            chunksize: pool.inner.config.chunksize.unwrap_or(1),
            window: pool.inner.config.window,
            shared: Arc::new(ImapShared {
                state: Mutex::new(ImapState {
                    chunks: BTreeMap::new(),
                    unordered: VecDeque::new(),
                    arrived: Default::default(),
                }),
                arrived: Condvar::new(),
            }),
            submitted: 0,
            read: 0,
            next_chunk: 0,
            in_flight: 0,
            exhausted: false,
            progress: Progress::default(),
            misconfigured: None,
        }
    }

    /// Items per task (1 by default, as in Python): larger chunks cost fewer round trips. Zero
    /// cannot work: the first item is then [`Error::PoolConfig`], and the input is not read.
    pub fn chunksize(mut self, items: usize) -> Self {
        self.chunksize = items.max(1);
        if items == 0 {
            self.misconfigured = Some("an imap's chunksize must be at least 1");
        }
        self
    }

    /// How many items may be in flight at once (the pool's `imap_window` by default). Zero
    /// cannot work: the first item is then [`Error::PoolConfig`], and the input is not read.
    pub fn window(mut self, items: usize) -> Self {
        self.window = items.max(1);
        if items == 0 {
            self.misconfigured = Some("an imap's window must be at least 1");
        }
        self
    }

    /// Says how many items the input holds, for [`progress`](Imap::progress) (tqdm's
    /// `total=`): an input of exact size (a `Vec`, a range) says so itself; a filter, a file's
    /// lines or a channel does not. Only for reporting: the input is still read to its end.
    pub fn total(mut self, items: usize) -> Self {
        self.total = Some(items);
        self
    }

    /// Calls `on_progress` in this thread after each result is taken, with
    /// [`progress`](Imap::progress): with the `progress` feature, `progress_bar()` draws a
    /// terminal bar.
    ///
    /// ```
    /// # extern crate multiproc_runtime as multiproc;
    /// use multiproc::{process_fn, Pool, Progress};
    ///
    /// #[process_fn]
    /// fn words(text: String) -> usize {
    ///     text.split_whitespace().count()
    /// }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let pool = Pool::new(2)?;
    /// let texts: Vec<String> = (0..50).map(|i| "a b c ".repeat(i)).collect();
    /// let mut last = Progress::default();
    /// let mut sum = 0;
    /// for n in pool.imap_unordered(words, texts).on_progress(|p| last = p) {
    ///     sum += n?;
    /// }
    /// assert_eq!(sum, 3 * (0..50).sum::<usize>());
    /// assert_eq!((last.done, last.total), (50, Some(50))); // the Vec said how many
    /// # Ok(())
    /// # }
    /// ```
    pub fn on_progress(mut self, on_progress: impl FnMut(Progress) + 'p) -> Self {
        self.on_progress = Some(Box::new(on_progress));
        self
    }

    /// How far it has come: results taken, failed ones among them, and the number of items
    /// when known (given by [`total`](Imap::total) or by the input's exact size, else once the
    /// input has ended).
    pub fn progress(&self) -> Progress {
        let ended = self.exhausted.then_some(self.progress.done + self.in_flight);
        Progress { total: self.total.or(ended), ..self.progress }
    }

    fn report(&mut self) {
        let progress = self.progress();
        if let Some(on_progress) = self.on_progress.as_mut() {
            on_progress(progress);
        }
    }

    /// Reads input and submits chunks until the window is full or the input ends.
    fn top_up(&mut self) {
        while !self.exhausted && self.in_flight + self.chunksize <= self.window.max(self.chunksize) {
            let chunk: Vec<F::Args> = self.items.by_ref().take(self.chunksize).collect();
            if chunk.len() < self.chunksize {
                self.exhausted = true;
            }
            if chunk.is_empty() {
                break;
            }
            self.submit(chunk);
        }
    }

    /// Submits a chunk of input; a failed item's error is an [`Error::Item`] with its index in
    /// the input, so that an unordered stream still tells which input failed.
    fn submit(&mut self, chunk: Vec<F::Args>) {
        self.in_flight += chunk.len();
        let (shared, ordered, submitted) = (Arc::clone(&self.shared), self.ordered, &mut self.submitted);
        let first = &mut self.read;
        let pending = &mut self.pending;
        self.pool.submit_pieces::<F>(&chunk, chunk.len(), usize::MAX, |id, len| {
            pending.push_back(id);
            let number = *submitted;
            *submitted += 1;
            let base = *first;
            *first += len;
            let shared = Arc::clone(&shared);
            Sink::new(move |delivery| {
                let results = decode::batch::<F>(delivery, len, std::path::Path::new("/proc/self/exe")).into_results();
                let results = results
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| r.map_err(|e| Error::Item { index: base + i, error: Box::new(e) }));
                let mut st = shared.lock();
                st.arrived.insert(id);
                if ordered {
                    st.chunks.insert(number, results.collect());
                } else {
                    st.unordered.extend(results);
                }
                drop(st);
                shared.arrived.notify_all();
            })
        });
    }

    fn take_ready(&mut self, st: &mut ImapState<F::Output>) -> Option<Result<F::Output>> {
        if !self.ordered {
            return st.unordered.pop_front();
        }
        let chunk = st.chunks.get_mut(&self.next_chunk)?;
        let r = chunk.pop_front();
        if chunk.is_empty() {
            st.chunks.remove(&self.next_chunk);
            self.next_chunk += 1;
        }
        r
    }
}

/// Dropping an `Imap` before its end cancels the chunks it submitted that no worker has
/// started (its read-ahead); the ones running finish, and their results are dropped.
impl<F: ProcessFn, I> Drop for Imap<'_, F, I> {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let ids: Vec<u64> = self.pending.drain(..).collect();
            self.pool.inner.cancel_queued(&ids);
        }
    }
}

impl<F, I> Iterator for Imap<'_, F, I>
where
    F: ProcessFn,
    F::Output: Send + 'static,
    I: Iterator<Item = F::Args>,
{
    type Item = Result<F::Output>;

    fn next(&mut self) -> Option<Result<F::Output>> {
        if let Some(reason) = self.misconfigured.take() {
            self.exhausted = true;
            self.progress.done += 1;
            self.progress.failed += 1;
            self.report();
            return Some(Err(Error::PoolConfig { reason: reason.into() }));
        }
        self.top_up();
        let shared = Arc::clone(&self.shared);
        let mut st = shared.lock();
        loop {
            while self.pending.front().is_some_and(|id| st.arrived.remove(id)) {
                self.pending.pop_front(); // arrived: nothing to cancel
            }
            if let Some(r) = self.take_ready(&mut st) {
                self.in_flight -= 1;
                self.progress.done += 1;
                self.progress.failed += r.is_err() as usize;
                drop(st);
                self.top_up();
                self.report();
                return Some(r);
            }
            if self.in_flight == 0 && self.exhausted {
                return None;
            }
            st = shared.arrived.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}
