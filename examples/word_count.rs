//! Word counts over 200 files with `imap_unordered`, as a Python user would write it with
//! `pool.imap_unordered(count, files)`: each worker reads and counts one file, the parent
//! merges the counts as they come, with a progress report and the total known up front.
//!
//! ```text
//! cargo run --example word_count
//! ```

use std::collections::HashMap;
use std::path::PathBuf;

use multiproc::{process_fn, Pool};

/// The words of one file and how often each appears.
#[process_fn]
fn count_words(path: PathBuf) -> multiproc::Result<HashMap<String, u64>> {
    let text = std::fs::read_to_string(&path)
        .map_err(|e| multiproc::Error::Io { context: "could not read a file to count", error: e })?;
    let mut counts = HashMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word.to_lowercase()).or_insert(0) += 1;
    }
    Ok(counts)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 200 files of made-up text in a fresh directory
    let dir = std::env::temp_dir().join(format!("multiproc-word-count-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let words = ["the", "queue", "process", "pool", "lock", "value", "pipe", "manager"];
    let files: Vec<PathBuf> = (0..200)
        .map(|i| {
            let path = dir.join(format!("{i}.txt"));
            // some words come more often than others
            let text: Vec<&str> = (0..500).map(|k| words[((i * 7 + k * k) % 11).min(9) % 8]).collect();
            std::fs::write(&path, text.join(" ")).expect("a file written");
            path
        })
        .collect();

    let pool = Pool::new(4)?;
    let mut total: HashMap<String, u64> = HashMap::new();
    let mut last_report = 0;
    for counts in pool.imap_unordered(count_words, files).on_progress(|p| {
        if p.done - last_report >= 50 || Some(p.done) == p.total {
            println!("{}/{} files", p.done, p.total.unwrap_or(0));
            last_report = p.done;
        }
    }) {
        // the outer error: the call's (a crash, say); the inner: the function's own
        for (word, n) in counts?? {
            *total.entry(word).or_insert(0) += n;
        }
    }
    std::fs::remove_dir_all(&dir).ok();

    let mut top: Vec<(String, u64)> = total.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let all: u64 = top.iter().map(|(_, n)| n).sum();
    println!("{all} words in 200 files");
    for (word, n) in top.iter().take(3) {
        println!("{word}: {n}");
    }
    Ok(())
}
