//! A terminal progress bar for maps, behind the `progress` feature.

use indicatif::{ProgressBar, ProgressStyle};

use crate::pool::Progress;

/// A progress callback that draws a terminal bar (indicatif) for
/// [`Pool::map_progress`](crate::Pool::map_progress),
/// [`Pool::starmap_progress`](crate::Pool::starmap_progress) and
/// [`Imap::on_progress`](crate::Imap::on_progress): done of total, the failures, the rate and
/// the time left; for an `imap` whose input does not say its length (and no
/// [`total`](crate::Imap::total)), a running count. The bar is drawn on stderr, and only when
/// stderr is a terminal.
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{process_fn, progress_bar, Pool};
///
/// #[process_fn]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let pool = Pool::new(2)?;
/// let squares = pool.map_progress(square, 0..1000, progress_bar())?;
/// assert_eq!(squares.len(), 1000);
/// # Ok(())
/// # }
/// ```
pub fn progress_bar() -> impl FnMut(Progress) {
    let mut bar: Option<(ProgressBar, bool)> = None;
    move |p: Progress| {
        let (bar, counted) = bar.get_or_insert_with(|| (ProgressBar::new(0), false));
        match p.total {
            // the total known (a map, an imap over a Vec or with `.total(n)`): a bar
            Some(total) => {
                if !*counted {
                    if let Ok(style) =
                        ProgressStyle::with_template("{bar:40} {pos}/{len} items, {msg} ({per_sec}, {eta} left)")
                    {
                        bar.set_style(style);
                    }
                    *counted = true;
                }
                bar.set_length(total as u64);
            }
            // an imap over an input of unknown length: a count, not a bar of zero
            None if !*counted && bar.length() == Some(0) => {
                if let Ok(style) = ProgressStyle::with_template("{spinner} {pos} items, {msg} ({per_sec})") {
                    bar.set_style(style);
                }
                bar.set_length(u64::MAX);
            }
            None => {}
        }
        bar.set_position(p.done as u64);
        bar.set_message(format!("{} failed", p.failed));
        if p.total == Some(p.done) {
            bar.finish();
        }
    }
}
