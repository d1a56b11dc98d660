//! A queue shared between machines, the Python documentation's "remote manager": a server
//! holds a queue at an address, with a key; one program puts into it, another gets from it.
//! Each of them knows only the address and the key.
//!
//! ```text
//! remote_manager serve 0.0.0.0:50000    # on the host that holds the queue (runs until killed)
//! remote_manager put HOST:50000 hello   # on another host
//! remote_manager get HOST:50000         # on a third: prints hello
//! remote_manager                        # all three on this machine, as a demonstration
//! ```
//!
//! Python:
//! ```python
//! class QueueManager(BaseManager): pass
//! QueueManager.register('get_queue', callable=lambda: queue)
//! m = QueueManager(address=('', 50000), authkey=b'abracadabra')
//! m.get_server().serve_forever()                 # the server
//! m.connect(); m.get_queue().put('hello')        # one client
//! m.connect(); print(m.get_queue().get())        # another
//! ```

use std::process::Command;

use multiproc::Manager;

const KEY: &[u8] = b"abracadabra";

fn main() -> multiproc::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", addr] => {
            let manager = Manager::serve(addr, KEY)?;
            manager.named_queue::<String>("jobs")?;
            println!("serving at {}", manager.local_addr().expect("a served manager has an address"));
            loop {
                std::thread::park(); // until killed: the server ends with this process
            }
        }
        ["put", addr, text] => {
            let manager = Manager::connect(addr, KEY)?;
            manager.named_queue::<String>("jobs")?.put(text.to_string())?;
        }
        ["get", addr] => {
            let manager = Manager::connect(addr, KEY)?;
            println!("{}", manager.named_queue::<String>("jobs")?.get()?);
        }
        [] => {
            let manager = Manager::serve("127.0.0.1:0", KEY)?;
            manager.named_queue::<String>("jobs")?;
            let addr = manager.local_addr().expect("a served manager has an address").to_string();
            println!("serving at {addr}");
            let me = std::env::current_exe().expect("the path of this program");
            let run = |args: &[&str]| Command::new(&me).args(args).status().map(|s| s.success());
            let put = run(&["put", &addr, "hello"]);
            let got = run(&["get", &addr]);
            assert!(matches!((put, got), (Ok(true), Ok(true))), "a client failed");
        }
        _ => eprintln!("usage: remote_manager [serve ADDR | put ADDR TEXT | get ADDR]"),
    }
    Ok(())
}
