//! A conversation over a pipe: the parent asks, a child answers, until the parent hangs up.
//! Each end is typed: the parent's sends `Question`s and receives `Answer`s, the child's the
//! other way round.
//!
//! Python:
//! ```python
//! def expert(conn):
//!     while True:
//!         try: q = conn.recv()
//!         except EOFError: break
//!         conn.send(answer(q))
//! parent, child = Pipe(); p = Process(target=expert, args=(child,)); p.start()
//! parent.send(...); print(parent.recv()); ...; parent.close(); p.join()
//! ```

use multiproc::{pipe, process_fn, Connection, Error};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
enum Question {
    Square(u64),
    Reverse(String),
}

#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Square(u64),
    Reverse(String),
}

/// Answers until the other end hangs up; returns how many questions it answered.
#[process_fn]
fn expert(conn: Connection<Answer, Question>) -> u32 {
    let mut answered = 0;
    loop {
        let answer = match conn.recv() {
            Ok(Question::Square(x)) => Answer::Square(x * x),
            Ok(Question::Reverse(s)) => Answer::Reverse(s.chars().rev().collect()),
            Err(Error::Disconnected) => return answered, // the parent hung up
            Err(e) => panic!("{e}"),
        };
        conn.send(answer).unwrap();
        answered += 1;
    }
}

fn main() -> multiproc::Result<()> {
    let (parent, child) = pipe::<Question, Answer>()?;
    let p = expert.spawn(child)?;
    for question in [Question::Square(12), Question::Reverse("multiproc".into()), Question::Square(7)] {
        print!("asked {question:?}, ");
        parent.send(question)?;
        println!("got {:?}", parent.recv()?);
    }
    drop(parent); // hang up: the child's recv gives Disconnected
    println!("the child answered {} questions", p.join()?);
    Ok(())
}
