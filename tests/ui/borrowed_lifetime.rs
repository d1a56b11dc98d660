use multiproc::process_fn;
use std::borrow::Cow;

// `'static` is fine (owned data can be `Cow<'static, str>`); any other lifetime is a borrow
#[process_fn]
fn shout(text: Cow<'static, str>, words: Vec<Cow<'_, str>>) -> usize {
    text.len() + words.len()
}

fn main() {}
