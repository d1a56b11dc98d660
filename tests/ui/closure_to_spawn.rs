// A closure given to ProcessBuilder::spawn: the error says to use a #[process_fn].
fn main() -> multiproc::Result<()> {
    let _ = multiproc::ProcessBuilder::new().spawn(|x: u64| x + 1, (1,));
    Ok(())
}
